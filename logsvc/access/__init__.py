"""Access control: who is calling (principal), how they prove it
(authenticator, credentials, secret), and how often they may read (limits)."""

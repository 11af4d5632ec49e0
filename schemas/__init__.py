"""marshmallow schemas used at the HTTP boundary: entries, query parameters,
responses and the error shape."""

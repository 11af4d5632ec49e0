"""The web UI: `/` and its static files under `/ui/`. The page signs in
through `/api/session` and then reads with the session cookie."""
from flask import Blueprint, send_from_directory

blueprint = Blueprint("ui", __name__, static_folder="static", static_url_path="/ui")


@blueprint.get("/")
def index():
    return send_from_directory(blueprint.static_folder, "index.html", max_age=0)

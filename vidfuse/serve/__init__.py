"""``vidfuse serve``: the search API and web page (needs the ``serve`` extra: FastAPI, uvicorn)."""

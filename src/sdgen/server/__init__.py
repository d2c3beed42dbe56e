"""sdgen's HTTP server: schemas, routes and the job store; no model code.

``sdgen serve`` builds the app with ``sdgen.server.app.create_app``. Nothing is imported here, so
``import sdgen`` never pulls in FastAPI (the ``server`` extra).
"""

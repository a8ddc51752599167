"""Database backends: django-prometheus' wrappers, with one fix of cost (see ``sqlite3/base.py``)."""

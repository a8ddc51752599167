"""django-prometheus' SQLite backend (``django_db_*`` metrics), its cursor class built once per connection.

Its ``create_cursor`` builds a new cursor *class* (``ExportingCursorWrapper``) for every cursor, that is for every
query: about 15 µs of CPU each and a class for the garbage collector, which made an OCR request about 1 ms of server
CPU dearer in ``make bench``. The class depends only on the connection's alias and vendor, so one per connection
does the same work. Its PostgreSQL backend already builds it once per connection (``cursor_factory``).
"""

from __future__ import annotations

from typing import Any

from django_prometheus.db.backends.sqlite3 import base
from django_prometheus.db.common import ExportingCursorWrapper

DatabaseFeatures = base.DatabaseFeatures


class DatabaseWrapper(base.DatabaseWrapper):
    _exporting_cursor_class: type | None = None

    def create_cursor(self, name: str | None = None) -> Any:
        cursor_class = self._exporting_cursor_class
        if cursor_class is None:
            cursor_class = self._exporting_cursor_class = ExportingCursorWrapper(
                self.CURSOR_CLASS, self.alias, self.vendor
            )
        return self.connection.cursor(factory=cursor_class)

"""django-prometheus' model counters for users (``django_model_*_total{model="user"}``).

Jobs, pages and API tokens count their own saves and deletes through ``ExportModelOperationsMixin``; Django's user
model cannot take the mixin, so the same counters are incremented from its ``post_save`` and ``post_delete``
signals. Like the mixin, this sees only operations on model instances: ``QuerySet.update()`` and
``bulk_create()`` bypass both (a queryset ``delete()`` and a cascade do send ``post_delete``, so deleted users are
counted whichever way they went, where the mixin counts only ``instance.delete()`` calls).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save
from django_prometheus.models import model_deletes, model_inserts, model_updates

MODEL = "user"
_inserts = model_inserts.labels(MODEL)
_updates = model_updates.labels(MODEL)
_deletes = model_deletes.labels(MODEL)


def _saved(sender: Any, created: bool, raw: bool = False, **kwargs: Any) -> None:
    (_inserts if created else _updates).inc()


def _deleted(sender: Any, **kwargs: Any) -> None:
    _deletes.inc()


def connect() -> None:
    user_model = get_user_model()
    post_save.connect(_saved, sender=user_model, dispatch_uid="myocr-user-model-metrics-saved")
    post_delete.connect(_deleted, sender=user_model, dispatch_uid="myocr-user-model-metrics-deleted")

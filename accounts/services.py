"""Account writes: registration and the bootstrap (demo) user."""

from __future__ import annotations

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction


def user_register(*, username: str, password: str, email: str = "") -> AbstractBaseUser:
    """Create an active user after Django's username and password validation; raises ``ValidationError``."""
    user_model = get_user_model()
    UnicodeUsernameValidator()(username)
    if len(username) > 150:
        raise ValidationError("The username is longer than 150 characters.")
    if user_model.objects.filter(username__iexact=username).exists():
        raise ValidationError("That username is taken.")
    user = user_model(username=username, email=email.strip())
    password_validation.validate_password(password, user)
    user.set_password(password)
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:
        raise ValidationError("That username is taken.") from None
    return user


def bootstrap_user_ensure(*, username: str, password: str) -> tuple[AbstractBaseUser, bool]:
    """Create the bootstrap (demo) account if it does not exist yet; an existing account is left alone.

    Returns the user and whether it was created.
    """
    user_model = get_user_model()
    user, created = user_model.objects.get_or_create(username=username)
    if created:
        user.set_password(password)
        user.save()
    return user, created

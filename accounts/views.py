"""Account pages: register, log in and out, change the password (Django's auth views), API tokens."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from accounts import ratelimit
from accounts.decorators import page_owner_required
from accounts.forms import RegisterForm, TokenCreateForm
from accounts.models import ApiToken
from accounts.services import user_register
from accounts.tokens import token_create, token_revoke
from ocr import webhooks


class LoginView(auth_views.LoginView):
    """Django's login view with the brute-force limit of ``accounts.ratelimit``."""

    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "registration_open": settings.REGISTRATION_OPEN}

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        retry_after = ratelimit.login_retry_after(request, request.POST.get("username", ""))
        if retry_after is not None:
            messages.error(request, too_many_attempts_message(retry_after))
            form = self.get_form_class()(request)  # unbound: the password is not checked at all
            return rate_limited(self.render_to_response(self.get_context_data(form=form)), retry_after)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        ratelimit.login_succeeded(self.request, form.cleaned_data.get("username") or "")
        return super().form_valid(form)

    def form_invalid(self, form):
        ratelimit.login_failed(self.request, form.data.get("username", ""))
        return super().form_invalid(form)


def too_many_attempts_message(retry_after: int) -> str:
    minutes = max(1, math.ceil(retry_after / 60))
    return ngettext(
        "Too many attempts from your address. Try again in %(minutes)d minute.",
        "Too many attempts from your address. Try again in %(minutes)d minutes.",
        minutes,
    ) % {"minutes": minutes}


def rate_limited(response: HttpResponse, retry_after: int) -> HttpResponse:
    response.status_code = 429
    response["Retry-After"] = str(retry_after)
    return response


def login_rate_limited(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The brute-force limit around another login view (the admin's): a POST answered with anything but a
    redirect is a failed sign-in."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method != "POST":
            return view(request, *args, **kwargs)
        username = request.POST.get("username", "")
        retry_after = ratelimit.login_retry_after(request, username)
        if retry_after is not None:
            context = {"message": too_many_attempts_message(retry_after), "back": request.get_full_path()}
            return rate_limited(render(request, "429.html", context), retry_after)
        response = view(request, *args, **kwargs)
        if response.status_code in (301, 302, 303):
            ratelimit.login_succeeded(request, username)
        else:
            ratelimit.login_failed(request, username)
        return response

    return wrapper


class LogoutView(auth_views.LogoutView):
    pass


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("accounts:password-change-done")


class PasswordChangeDoneView(auth_views.PasswordChangeDoneView):
    template_name = "accounts/password_change_done.html"


@sensitive_post_parameters("password1", "password2")
@require_http_methods(["GET", "POST"])
def register(request: HttpRequest) -> HttpResponse:
    if not settings.REGISTRATION_OPEN:
        return render(request, "accounts/register.html", {"closed": True}, status=403)
    if request.method == "POST":
        retry_after = ratelimit.register_retry_after(request)
        if retry_after is not None:
            messages.error(request, too_many_attempts_message(retry_after))
            return rate_limited(render(request, "accounts/register.html", {"form": RegisterForm()}), retry_after)
    form = RegisterForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = user_register(username=form.cleaned_data["username"], password=form.cleaned_data["password1"])
        except ValidationError as error:
            form.add_error(None, error)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, _("Welcome, %(name)s! Your account is ready.") % {"name": user.get_username()})
            return redirect("ocr:home")
    return render(request, "accounts/register.html", {"form": form}, status=400 if form.errors else 200)


@require_http_methods(["GET", "POST"])
@page_owner_required
def tokens(request: HttpRequest) -> HttpResponse:
    """List the owner's API tokens and create one; a new token's secret is shown once, in this response only."""
    form = TokenCreateForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            issued = token_create(user=request.owner, name=form.cleaned_data["name"])
            # Post/redirect/get: reloading the page must not create a second token. The secret rides the session
            # to the next page view only, which takes it out.
            request.session[NEW_TOKEN_SESSION_KEY] = {"id": issued.token.pk, "secret": issued.secret}
            return redirect("accounts:tokens")
        status = 400
    created = _new_token(request)
    context = {
        "form": form,
        "created": created,
        "tokens": ApiToken.objects.filter(user=request.owner).order_by("-created_at"),
        "api_url": request.build_absolute_uri(reverse("api:ocr-image")),
        "webhook_secret": webhooks.secret_for(request.owner),
        "signature_header": webhooks.SIGNATURE_HEADER,
    }
    return render(request, "accounts/tokens.html", context, status=status)


NEW_TOKEN_SESSION_KEY = "accounts.new_token"  # noqa: S105 - a session key, not a secret


def _new_token(request: HttpRequest) -> dict[str, object] | None:
    """The token created just before this page view, shown once: its secret leaves the session now."""
    shown = request.session.pop(NEW_TOKEN_SESSION_KEY, None)
    if not shown:
        return None
    token = ApiToken.objects.filter(pk=shown["id"], user=request.owner).first()
    return {"token": token, "secret": shown["secret"]} if token is not None else None


@require_POST
@page_owner_required
def webhook_rotate(request: HttpRequest) -> HttpResponse:
    """Replace the owner's webhook secret; the tokens page shows the new one."""
    webhooks.rotate_secret(request.owner)
    messages.success(request, _("Your webhook secret was replaced: webhooks from now on are signed with the new one."))
    return redirect("accounts:tokens")


@require_POST
@page_owner_required
def token_revoke_view(request: HttpRequest, token_id: int) -> HttpResponse:
    token = ApiToken.objects.filter(pk=token_id, user=request.owner).first()
    if token is None:
        raise Http404
    token_revoke(user=request.owner, token_id=token.pk)
    if request.htmx:
        token.refresh_from_db()
        return render(request, "accounts/tokens.html#token-row", {"token": token})
    messages.success(request, _("The token “%(name)s” was revoked.") % {"name": token.name})
    return redirect("accounts:tokens")

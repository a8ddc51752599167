"""Account pages: register, log in and out, change the password (Django's auth views), API tokens."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from accounts.decorators import page_owner_required
from accounts.forms import RegisterForm, TokenCreateForm
from accounts.models import ApiToken
from accounts.services import user_register
from accounts.tokens import token_create, token_revoke


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "registration_open": settings.REGISTRATION_OPEN}


class LogoutView(auth_views.LogoutView):
    pass


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("accounts:password-change-done")


class PasswordChangeDoneView(auth_views.PasswordChangeDoneView):
    template_name = "accounts/password_change_done.html"


@require_http_methods(["GET", "POST"])
def register(request: HttpRequest) -> HttpResponse:
    if not settings.REGISTRATION_OPEN:
        return render(request, "accounts/register.html", {"closed": True}, status=403)
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
    created = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            created = token_create(user=request.owner, name=form.cleaned_data["name"])
            form = TokenCreateForm()
            status = 201
        else:
            status = 400
    context = {
        "form": form,
        "created": created,
        "tokens": ApiToken.objects.filter(user=request.owner).order_by("-created_at"),
        "api_url": request.build_absolute_uri(reverse("api:ocr-image")),
    }
    return render(request, "accounts/tokens.html", context, status=status)


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

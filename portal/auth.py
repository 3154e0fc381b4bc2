"""django-allauth glue: adapters and signal receivers that call Tollgate services."""

from types import SimpleNamespace
from urllib.parse import urlsplit

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.signals import password_changed, password_reset, user_logged_in
from allauth.mfa.adapter import DefaultMFAAdapter
from allauth.mfa.signals import authenticator_added, authenticator_removed, authenticator_reset
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.dispatch import receiver
from django.urls import reverse

from portal import selectors
from portal.audit import Actor, audit_record
from portal.emails import email_queue
from portal.env import env_bool


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request) -> bool:
        return env_bool("ACCOUNT_ALLOW_SIGNUP", True)

    def send_mail(self, template_prefix: str, email: str, context: dict) -> None:
        """Render the email now, send it from a Celery worker after the commit.

        The site is named from the settings, never from the request's host name (allauth's
        default without django.contrib.sites: "Hello from localhost:8000!").
        """
        from allauth.core import context as allauth_context

        request = allauth_context.request
        ctx = {
            "request": request,
            "email": email,
            "current_site": SimpleNamespace(
                name=settings.SITE_NAME, domain=urlsplit(settings.SITE_URL).netloc
            ),
            "site_name": settings.SITE_NAME,
            "site_url": settings.SITE_URL,
        }
        ctx.update(context)
        message = self.render_mail(template_prefix, email, ctx)
        html = next(
            (
                content
                for content, mimetype in getattr(message, "alternatives", [])
                if mimetype == "text/html"
            ),
            None,
        )
        email_queue(to=list(message.to), subject=message.subject, body=message.body, html=html)

    def format_email_subject(self, subject: str) -> str:
        return f"[{settings.SITE_NAME}] {subject}"

    def get_login_redirect_url(self, request) -> str:
        """Land on the invitations waiting for the user, if any; else on the console."""
        if selectors.invitations_pending_for(user=request.user).exists():
            return reverse("invitations-pending")
        return reverse("console-home")

    def _get_login_attempts_cache_key(self, request, **credentials) -> str:
        """Count failed logins per address and account, never per account alone.

        allauth keys its per-"key" limit on the account, so wrong passwords sent from
        anywhere would lock its owner out. With the client address in the key, failures
        from one address throttle that address (the per-"ip" limit) and that address's
        attempts on the account; the owner still logs in from elsewhere.
        """
        return (
            f"{self.get_client_ip(request)}:{super()._get_login_attempts_cache_key(request, **credentials)}"
        )


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def is_open_for_signup(self, request, sociallogin) -> bool:
        return env_bool("ACCOUNT_ALLOW_SIGNUP", True)


class MFAAdapter(DefaultMFAAdapter):
    def get_totp_label(self, user) -> str:
        return user.email


def _actor(request, user) -> Actor:
    if request is None:
        return Actor(user=user)
    return Actor.from_request(request, user=user)


@receiver(user_logged_in)
def _audit_login(sender, request, user, **kwargs):
    sociallogin = kwargs.get("sociallogin")
    method = f"sso:{sociallogin.account.provider}" if sociallogin else "password"
    audit_record(actor=_actor(request, user), action="user.login", target=user, metadata={"method": method})


@receiver(user_login_failed)
def _audit_login_failed(sender, credentials, request=None, **kwargs):
    email = str(credentials.get("email") or credentials.get("username") or "")[:254]
    audit_record(
        actor=_actor(request, None),
        action="user.login_failed",
        target_type="user",
        metadata={"email": email},
    )


@receiver(password_changed)
@receiver(password_reset)
def _audit_password(sender, request, user, **kwargs):
    audit_record(actor=_actor(request, user), action="user.password_changed", target=user)


@receiver(authenticator_added)
def _audit_mfa_added(sender, request, user, authenticator, **kwargs):
    audit_record(
        actor=_actor(request, user),
        action="mfa.enabled",
        target=user,
        metadata={"type": authenticator.type},
    )


@receiver(authenticator_removed)
def _audit_mfa_removed(sender, request, user, authenticator, **kwargs):
    audit_record(
        actor=_actor(request, user),
        action="mfa.disabled",
        target=user,
        metadata={"type": authenticator.type},
    )


@receiver(authenticator_reset)
def _audit_mfa_reset(sender, request, user, authenticator, **kwargs):
    audit_record(
        actor=_actor(request, user),
        action="mfa.recovery_codes_regenerated",
        target=user,
        metadata={"type": authenticator.type},
    )

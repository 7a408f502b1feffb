"""The Django Channels application frameworks.py serves with daphne: an echo consumer at /ws/ behind
AllowedHostsOriginValidator, which admits Origins whose host is in ALLOWED_HOSTS (app.example and
127.0.0.1: a development set-up whose production page, on another host, is refused)."""

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["app.example", "127.0.0.1"],
        SECRET_KEY="frameworks-test-" + "x" * 40,
        INSTALLED_APPS=["channels"],
        ROOT_URLCONF=__name__,
    )
    django.setup()

from channels.generic.websocket import WebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

urlpatterns = []


class Echo(WebsocketConsumer):
    def receive(self, text_data=None, bytes_data=None):
        self.send(text_data=text_data)


application = ProtocolTypeRouter({"websocket": AllowedHostsOriginValidator(URLRouter([path("ws/", Echo.as_asgi())]))})

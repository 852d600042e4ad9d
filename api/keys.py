"""Typed keys of what the application holds (set up by `api.app.create_app`)."""

from __future__ import annotations

import weakref

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from api.broadcast import Broadcasts
from api.hub import Hub
from api.launch import Launcher
from api.pages import Pages
from api.queries import Store
from api.settings import ApiSettings
from api.slots import StreamSlots
from api.throttle import LoginThrottle

SETTINGS = web.AppKey("settings", ApiSettings)
#: Where the API reads from (TASKLOG_API_READ_URL, else the primary).
STORE = web.AppKey("store", Store)
#: The primary (TASKLOG_DATABASE_URL): what a lagging replica does not show yet.
PRIMARY = web.AppKey("primary", Store)
HUB = web.AppKey("hub", Hub)
#: The tasks' broadcasts to their followers in step (`api.broadcast`).
BROADCASTS = web.AppKey("broadcasts", Broadcasts)
PAGES = web.AppKey("pages", Pages)
LAUNCHER = web.AppKey("launcher", Launcher)
STREAMS: web.AppKey[weakref.WeakSet[EventSourceResponse]] = web.AppKey("streams")
LOGINS = web.AppKey("logins", LoginThrottle)
SLOTS = web.AppKey("slots", StreamSlots)

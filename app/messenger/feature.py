"""The messenger, as the app is assembled from it. To remove the example, delete
app/messenger/ and its two lines in app/main.py (its import, its entry in FEATURES)."""

from app.core.events import Listening, UserChanged, UserDeleted, in_transaction, on
from app.core.feature import Feature
from app.core.middleware import API
from app.messenger import (
    block_routes,
    message_routes,
    realtime,
    thread_routes,
    upload_lifecycle,
    upload_routes,
)
from app.messenger.events import ThreadEvent
from app.messenger.realtime import hub
from app.messenger.threads import leave_all
from app.messenger.uploads import PURGE

messenger = Feature(
    name="messenger",
    routers=[
        thread_routes.router,
        message_routes.router,
        message_routes.search,
        message_routes.mentions,
        block_routes.router,
        upload_routes.router,
        realtime.router,
    ],
    subscriptions=[
        # A deleted account leaves its threads in the deletion's own transaction.
        in_transaction(UserDeleted, leave_all),
        # Each process's hub tells its sockets, in commit order per thread.
        on(ThreadEvent, hub.receive),
        on(UserChanged, hub.user_changed),
        on(Listening, hub.listening),
    ],
    # A deleted upload's bytes go by a job each; the hourly chores expire unattached
    # uploads, sweep what a crash left behind (bytes without a row, rows without bytes)
    # and count the bytes stored.
    jobs={PURGE: upload_lifecycle.purge},
    chores=[upload_lifecycle.expire, upload_lifecycle.sweep, upload_lifecycle.measure],
    services=[hub],
    upload_paths=[API + upload_routes.router.prefix],  # POST /api/uploads
)

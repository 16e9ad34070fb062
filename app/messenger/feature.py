"""The messenger, as the app is assembled from it. To remove the example, delete
app/messenger/ and its entry in app/main.py."""

from app.core.events import Listening, UserChanged, UserDeleted, in_transaction, on
from app.core.feature import Feature
from app.messenger import block_routes, message_routes, realtime, thread_routes
from app.messenger.events import ThreadEvent
from app.messenger.realtime import hub
from app.messenger.threads import leave_all

messenger = Feature(
    name="messenger",
    routers=[
        thread_routes.router,
        message_routes.router,
        message_routes.search,
        message_routes.mentions,
        block_routes.router,
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
    services=[hub],
)

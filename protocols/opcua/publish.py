"""MaxNotificationsPerPublish for asyncua's server subscriptions.

asyncua (2.1) ignores a client's MaxNotificationsPerPublish: CreateSubscription does not keep
it, ModifySubscription drops every requested value, and ``InternalSubscription`` builds each
Publish response from all it has queued (``_pop_publish_result`` flattens the queue of every
monitored item into one DataChangeNotification and sets MoreNotifications False). A client that
fell behind, or paused publishing, then gets its whole backlog in one response, up to the queue
size of every item (10,000 items of 100 Double changes: 34 MB); past the client's MaxMessageSize
(which `_RequestLimits` tells it is the bound of our responses) the client cuts the
connection, and meets the same response again when it reconnects.

`LimitedSubscription` is asyncua's subscription with the queue taken at most ``limit``
notifications at a time (data changes first, then events, each item's in the order they
came), MoreNotifications True while any are left, and the rest sent in the responses to the
client's next Publish requests: the queued ones at once, then each as it arrives (asyncua keeps
a subscription that found no request waiting and answers it with the next one), as the state
table of OPC UA Part 4, 5.13.1.2, says. Each response is its own NotificationMessage with its
own sequence number, kept for Republish until acknowledged: asyncua's own bookkeeping, which
this leaves alone. A status change (only ever one, when a subscription ends) is not counted.

The limit is the client's, at most `PUBLISH_CAP` (0, "no limit" to the client, is the cap):
open62541's servers cap it at 1,000 by default too. 1,000 Double changes are 34 KB.

`limit` installs it on a subscription asyncua has just created, by changing its class (the
subclass adds no state asyncua's constructor would set, only overrides). It checks the private
names it overrides first; should a later asyncua rename them, the subscription is left as it
is, unlimited, and a warning says so once.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from asyncua import ua
from asyncua.server.internal_subscription import InternalSubscription

log = logging.getLogger(__name__)

PUBLISH_CAP = 1_000  # notifications per Publish response at most, whatever the client asks

# asyncua's names that LimitedSubscription relies on: the methods it overrides, its queues
_METHODS = (
    "publish_results",
    "_pop_publish_result",
    "_pop_triggered_datachanges",
    "_pop_triggered_events",
)
_QUEUES = ("_triggered_datachanges", "_triggered_events")

_T = TypeVar("_T")


def per_publish(requested: int) -> int:
    """Notifications per Publish response for a client's MaxNotificationsPerPublish."""
    return PUBLISH_CAP if requested <= 0 else min(requested, PUBLISH_CAP)


class LimitedSubscription(InternalSubscription):
    """asyncua's subscription, sending at most `limit` notifications per Publish response."""

    limit = PUBLISH_CAP
    _budget = PUBLISH_CAP  # what is left of the limit for the response being built

    async def publish_results(self, requestdata: Any = None) -> bool:
        sent = await super().publish_results(requestdata)
        # More left: answer the next Publish request now, if one waits. If none does, asyncua
        # keeps this subscription to answer the next that arrives, and the loop ends (having
        # counted one publishing cycle without a request toward the lifetime: reset by the
        # next response).
        again = sent
        while again and self.has_more_notifications() and self.pub_request_callback is not None:
            again = await super().publish_results()
        return sent

    def has_more_notifications(self) -> bool:
        """Whether notifications are left that publishing would send."""
        return bool(
            self._publishing_enabled and (self._triggered_datachanges or self._triggered_events)
        )

    def _pop_publish_result(self) -> ua.PublishResult:
        self._budget = self.limit
        result = super()._pop_publish_result()
        result.MoreNotifications = self.has_more_notifications()
        return result

    def _pop_triggered_datachanges(self, result: ua.PublishResult) -> None:
        items = self._take(self._triggered_datachanges)
        if items:
            notification = ua.DataChangeNotification(MonitoredItems=items)
            result.NotificationMessage.NotificationData.append(notification)

    def _pop_triggered_events(self, result: ua.PublishResult) -> None:
        events = self._take(self._triggered_events)
        if events:
            notification = ua.EventNotificationList(Events=events)
            result.NotificationMessage.NotificationData.append(notification)

    def _take(self, queue: dict[int, list[_T]]) -> list[_T]:
        """Up to the budget left from ``queue`` (monitored item id -> its notifications, in the
        order they came): the items in the order they started queueing, each item's oldest
        first. What is left stays queued where it was, and new ones go after it."""
        taken: list[_T] = []
        for mid in list(queue):
            room = self._budget - len(taken)
            if room <= 0:
                break
            pending = queue[mid]
            taken.extend(pending[:room])
            if len(pending) <= room:
                del queue[mid]
            else:
                del pending[:room]
        self._budget -= len(taken)
        return taken


_warned = False


def limit(subscriptions: Any, subscription_id: int, requested: int) -> None:
    """Hold subscription ``subscription_id`` of asyncua's ``subscriptions`` (id ->
    subscription) to the client's MaxNotificationsPerPublish ``requested``."""
    global _warned
    sub = subscriptions.get(subscription_id) if isinstance(subscriptions, dict) else None
    if sub is None:
        return
    if type(sub) is InternalSubscription and _supported(sub):
        sub.__class__ = LimitedSubscription
    if isinstance(sub, LimitedSubscription):
        sub.limit = per_publish(requested)
    elif not _warned:
        _warned = True
        log.warning(
            "this asyncua's subscriptions are not what protocols.opcua.publish knows: "
            "MaxNotificationsPerPublish is not enforced, a Publish response may carry a "
            "subscription's whole backlog"
        )


def _supported(sub: InternalSubscription) -> bool:
    methods = all(callable(getattr(InternalSubscription, m, None)) for m in _METHODS)
    queues = all(isinstance(getattr(sub, q, None), dict) for q in _QUEUES)
    return methods and queues and isinstance(getattr(sub, "_publishing_enabled", None), bool)

#!/usr/bin/env python3
"""Charge once through idem from Python (pika), and wait for the result.

    pip install pika
    python3 producer.py order-17 acc_1 1250 EUR

IDEM_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f) and IDEM_QUEUE
(default idem.charges) say where idem listens; IDEM_SCOPE sets the key's
scope (app_id). Prints the result event's body as JSON on stdout.

What idem's contract asks of a producer (docs/contracts.md, docs/asyncapi.yaml):
- message_id is the idempotency key: publish the same key again to retry,
  never a new one; idem charges a key once whatever happens;
- persistent messages (delivery_mode 2), published with confirms, mandatory,
  so that a message is either confirmed by the broker or an error here;
- a JSON body {"account_id", "amount" (minor units, a plain integer),
  "currency", "description"?} (docs/schema/charge-request.v1.schema.json).

Exit status: 0 with a result, 2 when the broker returned or refused the
message, 3 when no result came in time (publish the same key again to get it).
"""

import json
import os
import sys
import time
import uuid

import pika

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def main(argv):
    if len(argv) != 5:
        print("usage: producer.py <key> <account_id> <amount> <currency>", file=sys.stderr)
        return 64
    key, account, amount, currency = argv[1], argv[2], int(argv[3]), argv[4]
    url = os.environ.get("IDEM_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    queue = os.environ.get("IDEM_QUEUE", "idem.charges")
    scope = os.environ.get("IDEM_SCOPE")
    timeout = float(os.environ.get("IDEM_WAIT_SECS", "30"))

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()

    correlation_id = str(uuid.uuid4())
    result = {}

    def on_reply(_channel, _method, properties, body):
        # Replies to earlier, timed-out requests may arrive: match ours.
        if properties.correlation_id == correlation_id:
            result["body"] = json.loads(body)
            result["kind"] = (properties.headers or {}).get("x-idem-kind")

    # Direct Reply-To: consume (auto-ack) before publishing on this channel.
    channel.basic_consume(DIRECT_REPLY_TO, on_reply, auto_ack=True)

    body = json.dumps({"account_id": account, "amount": amount, "currency": currency})
    properties = pika.BasicProperties(
        message_id=key,
        app_id=scope,
        content_type="application/json",
        delivery_mode=2,
        timestamp=int(time.time()),
        correlation_id=correlation_id,
        reply_to=DIRECT_REPLY_TO,
    )
    try:
        channel.basic_publish("", queue, body.encode(), properties, mandatory=True)
    except pika.exceptions.UnroutableError:
        print(f"no queue {queue}: the broker returned the message", file=sys.stderr)
        return 2
    except pika.exceptions.NackError:
        print("the broker refused the message: publish it again", file=sys.stderr)
        return 2

    deadline = time.monotonic() + timeout
    while "body" not in result and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.2)
    connection.close()
    if "body" not in result:
        print(f"no result within {timeout} s: publish the same key again for it", file=sys.stderr)
        return 3
    print(json.dumps({"kind": result["kind"], "event": result["body"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

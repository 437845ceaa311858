"""A Server-Sent Events client on Python's standard library, for the tests of `/sse`.

    python3 sse_client.py URL [LAST_EVENT_ID]

Prints one JSON line per event: {"event", "id", "data"} (`id` is the last event id seen, as
an EventSource keeps it), then {"end": true} when the server ends the stream. Comments
(keep-alives) are counted in {"comments": N} lines.
"""

import http.client
import json
import sys
import urllib.parse


def main():
    url = urllib.parse.urlsplit(sys.argv[1])
    headers = {"Accept": "text/event-stream"}
    if len(sys.argv) > 2:
        headers["Last-Event-ID"] = sys.argv[2]
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    conn.request("GET", f"{url.path}?{url.query}", headers=headers)
    response = conn.getresponse()
    print(json.dumps({"status": response.status}), flush=True)
    if response.status != 200:
        print(json.dumps({"body": response.read().decode()}), flush=True)
        return
    event, data, last_id, comments = "message", [], None, 0
    while True:
        raw = response.readline()
        if not raw:
            break
        line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
        if line == "":
            if data:
                payload = json.loads("\n".join(data))
                print(json.dumps({"event": event, "id": last_id, "data": payload}), flush=True)
            event, data = "message", []
            continue
        if line.startswith(":"):
            comments += 1
            print(json.dumps({"comments": comments}), flush=True)
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            last_id = value
    print(json.dumps({"end": True}), flush=True)


if __name__ == "__main__":
    main()

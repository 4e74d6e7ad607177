#!/usr/bin/env python3
"""A writer for history checks: signs users up at URL until the file STOP exists, and logs
every attempt to OUT, one line each: `ok START END ID` for an acknowledged sign-up (201),
`fail START WHAT` otherwise (a status or an exception's name). Times are Unix seconds.
The name in URL is resolved on every request, as a browser would after the DNS TTL.

    history-writer.py URL OUT STOP REGION
"""
import json, os, sys, time, urllib.error, urllib.request

url, out, stop, region = sys.argv[1:5]
n = 0
with open(out, "a", buffering=1) as f:
    while not os.path.exists(stop):
        n += 1
        email = "%s-%d-%d@example.com" % (region, n, time.time_ns())
        body = {"email": email, "password": "correct horse battery", "firstName": "John", "lastName": region,
                "address": {"streetAddress": "21 2nd Street", "city": "New York", "state": "NY", "postalCode": "10021"},
                "phoneNumbers": ["212 555-1234"]}
        req = urllib.request.Request(url + "/users", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        t = time.time()
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                answer = json.load(r)
                if r.status == 201:
                    f.write("ok %.3f %.3f %d\n" % (t, time.time(), answer["id"]))
                else:
                    f.write("fail %.3f %d\n" % (t, r.status))
        except urllib.error.HTTPError as e:
            f.write("fail %.3f %d\n" % (t, e.code))
        except Exception as e:
            f.write("fail %.3f %s\n" % (t, type(e).__name__))
        time.sleep(0.1)

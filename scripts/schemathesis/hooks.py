"""Schemathesis hooks for scripts/schemathesis.sh (loaded through
SCHEMATHESIS_HOOKS).

`cargo lambda watch`, the local stand-in for API Gateway, answers a request
whose body is not UTF-8 with a 500 of its own (`{"type":
"https://httpstatuses.com/500", ...}`, text/plain) while turning it into a
Lambda event, before any function runs. API Gateway delivers such bodies
(base64-encoded), and the function answers them `400 invalid_json` (the
property tests in shared/tests/it/fuzz.rs; also `cargo lambda invoke` of a
base64 event with the bytes 07 24 F9). So the random-bytes bodies of
schemathesis's negative testing are made valid UTF-8 here (invalid
sequences become U+FFFD): they still are not JSON, and still test the
`invalid_json` path through the emulator.
"""

import schemathesis


@schemathesis.hook
def map_body(context, body):
    if isinstance(body, (bytes, bytearray)):
        try:
            bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(body).decode("utf-8", "replace").encode("utf-8")
    return body

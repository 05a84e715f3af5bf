"""Load tests of a lingbot-rt server: simulated players over real gRPC (`lingbot-rt loadtest`).

    patterns.py  scripted key patterns (held keys, turns, idle), looped on the wall clock
    player.py    one player: a `Client` session, keys sent, frames read, a `SessionTrace` kept
    stats.py     per-session and overall numbers (FPS, latency percentiles, drops, stalls, errors)
    driver.py    N players at once; the ramp to capacity; the server's capacity and model
    report.py    the JSON document, the terminal summary, the files under --out
    plot.py      the PNG (matplotlib)
    cli.py       the `loadtest` subcommand (registered by lingbot_rt/cli.py)

Why a plain asyncio client and not Locust: a player is one bidirectional `Play` stream for a
whole minute, and what we measure is per frame: the echoed client timestamp of the first frame
that shows an action, sequence gaps, arrival times. The `Client` we ship (`lingbot_rt.services.
client`, grpc.aio) already does exactly that, so a player is a few dozen lines over it, measured
with the same code a real Python client runs. Locust's gRPC integration (examples/grpc) is built
around unary calls timed by an interceptor, on gevent (`grpc.experimental.gevent.init_gevent()`),
which cannot drive grpc.aio; streams would have to be timed by hand inside gevent greenlets and
fed in as one fake "request" per frame, and its RPS/percentile tables have no place for refused
sessions, drops or capacity. One asyncio loop runs dozens of players, each awaiting its own stream;
the client's cost stays small because frames are not decoded (JPEG bytes are only counted).
"""

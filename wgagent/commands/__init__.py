"""The ``wgagent`` commands, one module each; ``cli.py`` parses the arguments and calls ``main(args)``.

    run.py       run [--once]          the daemon (daemon.py), or one pass of every part
    status.py    status [--json]       the running daemon's /status, as a table
    discover.py  discover [--json]     one public IP round, nothing adopted
    gc.py        gc [--dry-run] [--json]  one dead-peer GC pass now
    doctor.py    doctor [--json]       what is wrong on this node, and the fix
    mesh.py      mesh [--json]         which node pairs cannot talk, why, and the fix
    text.py      the text helpers every command prints with (tables, times)

The rule, so the house stays readable: a command is a thin adapter. It loads the config,
asks ``wiring.py`` for the adapters it needs, runs a part's pure core (``decide()``,
``select_stale_peers()``, ``diagnose()``) and prints. No part imports a command, and a
command imports only what it uses: ``wgagent status`` never imports aiohttp.

Exit codes, the same for every command: 0 all good; 1 something checked is failing;
2 bad usage or config (one line on stderr, never a traceback); 3 the daemon is not running.
"""

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3

"""agent.ops: operating the box.

    service.py   `refinery service install`: the systemd unit rendered with this checkout's paths
    sdnotify.py  sd_notify(3): READY, WATCHDOG, STOPPING, STATUS
    archive.py   the storage tiers: finished runs to the cold archive with a checksummed manifest

May import: config. Never the daemon, the trackers or the CLI.
"""

"""The sortbox daemon, in the order a picture meets it.

    settings, layout        what every stage stands on
    intake/                 stage 1: which files are there, and when one is ready to read
    sorting/                stage 2: read → classify → decide → copy → journal, per batch
    running/                the parts the long-running service composes
    service, ray_engine     the drivers: the daemon's lifecycle, a Ray backfill
    answers/                explain, status, review page, undo, backup, doctor
    cli                     the command line

Imports only point back up this list (tests/test_import_direction.py holds the full order).
"""

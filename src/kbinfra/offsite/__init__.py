"""Offsite backups with restic: encrypted, deduplicated copies of finished local backups.

``repository`` decides what restic is told (pure), ``restic`` runs it, ``run`` sends,
lists, fetches and checks, ``bare`` rebuilds a stack folder from an offsite copy alone,
``records`` keeps the small state next to the backups, ``schedule`` the timer files.
"""

"""Build the tracker the settings name, with its durable state in the queue database."""

from __future__ import annotations

from agent.state.local_tables import LocalIssues
from agent.state.tables import KeyValue
from agent.trackers.interface import Tracker
from agent.trackers.local_tracker import LocalTracker
from config import Settings
from jobqueue.db import make_engine
from jobqueue.migrations import init_db


def make_tracker(settings: Settings, engine=None) -> Tracker:
    """The tracker named by settings.daemon.tracker, its durable state in the queue database."""
    engine = engine or make_engine(settings=settings)
    init_db(engine)
    if settings.daemon.tracker == "github":
        # imported here: PyGithub (and requests under it) costs start-up time that the local tracker never needs
        from agent.trackers.github_tracker import GitHubTracker

        return GitHubTracker(settings, KeyValue(engine))
    return LocalTracker(LocalIssues(engine))

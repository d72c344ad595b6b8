"""Progress of long exporter work, shown on stderr with rich (quiet when stderr is not a terminal)."""
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Steps:
    """A fixed number of named steps with a progress bar."""

    def __init__(self, title: str, total: int):
        self.title = title
        self.total = total
        console = Console(stderr=True)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, transient=True,
                                  disable=not console.is_terminal)
        self._task = None

    def __enter__(self):
        self._progress.start()
        self._task = self._progress.add_task(self.title, total=self.total)
        return self

    def advance(self, what: str) -> None:
        self._progress.update(self._task, advance=1, description="{}: {}".format(self.title, what))

    def __exit__(self, *exc):
        self._progress.stop()
        return False

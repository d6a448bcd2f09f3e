"""A video's per-frame scores, one line per identity, against the decision threshold."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from forensic.scan import FileResult


class ScoreTimeline(PlotextPlot):
    DEFAULT_CSS = """
    ScoreTimeline { height: 14; width: 1fr; }
    """

    def __init__(self, result: FileResult, threshold: float, uncertain_band: float) -> None:
        super().__init__()
        self.result = result
        self.threshold = threshold
        self.uncertain_band = uncertain_band

    def on_mount(self) -> None:
        frames = self.result.frames
        use_time = all(frame.time is not None for frame in frames)
        plt = self.plt
        for identity in self.result.identities:
            points = [(frame.time if use_time else frame.index, face.score)
                      for frame in frames for face in frame.faces if face.identity == identity.identity]
            plt.plot([x for x, _ in points], [y for _, y in points], marker="braille", label=f"#{identity.identity}")
        plt.horizontal_line(self.threshold, color="red")
        if self.uncertain_band:
            for edge in (self.threshold - self.uncertain_band, self.threshold + self.uncertain_band):
                plt.horizontal_line(edge, color="orange")
        plt.ylim(0, 1)
        plt.xlabel("seconds" if use_time else "frame")
        plt.ylabel("P(fake)")

"""The active-learning widget's live plot of a round's loss per epoch."""

from __future__ import annotations


class LossPlot:
    """A small matplotlib plot of the round's loss per epoch, redrawn as epochs arrive."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3, 1.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = self.figure.add_subplot()
        self.points: dict[int, float] = {}
        self.clear()

    def clear(self) -> None:
        self.points.clear()
        self._draw()

    def add(self, epoch: int, loss: float) -> None:
        if self.points.get(epoch) != loss:
            self.points[epoch] = loss
            self._draw()

    def _draw(self) -> None:
        self.axes.clear()
        self.axes.set_xlabel("epoch", fontsize=8)
        self.axes.set_ylabel("loss", fontsize=8)
        if self.points:
            epochs = sorted(self.points)
            self.axes.plot(epochs, [self.points[e] for e in epochs], "-o", markersize=2)
        self.canvas.draw_idle()

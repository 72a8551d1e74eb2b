"""bts-predict's overview picture of a volume prediction: which slices it shows, and that it draws them."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np

from btseg.evaluation.plotting import overview_figure, overview_slices


def masks_with_tumor(pixels: list[int], size: int = 16) -> np.ndarray:
    masks = np.zeros((len(pixels), 1, size, size), bool)
    for i, count in enumerate(pixels):
        masks[i, 0].flat[:count] = True
    return masks


def test_the_slices_with_most_tumor_and_the_middle_one_in_slice_order():
    # by hand: the three largest are slices 3 (9 px), 6 (7 px), 1 (5 px); the middle of 9 is 4
    assert overview_slices(masks_with_tumor([0, 5, 0, 9, 1, 0, 7, 0, 0])) == [1, 3, 4, 6]
    assert overview_slices(masks_with_tumor([0, 0, 0, 0])) == [2]  # no tumor: the middle slice alone
    assert overview_slices(masks_with_tumor([0, 0, 4, 0, 0])) == [2]  # the middle one is also the tumor's
    two_targets = np.zeros((5, 2, 8, 8), bool)
    two_targets[0, 1, :2] = True  # tumor of the second target only counts as well
    assert overview_slices(two_targets) == [0, 2]


def test_the_overview_draws_one_panel_per_slice_shown():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(9, 16, 16)).astype(np.float32)
    masks = masks_with_tumor([0, 5, 0, 9, 1, 0, 7, 0, 0])
    figure = overview_figure(image, masks, list(range(100, 109)), ["whole_tumor"], "case: unet")
    try:
        axes = [axis for axis in figure.axes if axis.images]
        assert [axis.get_title().split(":")[0] for axis in axes] == ["slice 101", "slice 103", "slice 104 (middle)",
                                                                      "slice 106"]
        assert "103: whole_tumor 9 px" in axes[1].get_title()
        drawn = [axis for axis in axes if axis.collections]  # an outline wherever tumor was predicted
        assert len(drawn) == 4  # the middle slice has 1 tumor pixel: its outline too
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        plt.close(figure)

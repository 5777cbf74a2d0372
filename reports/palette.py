"""One colour per reward type in every report figure (the Okabe–Ito colour-blind-safe set).

`noisy-0.2`, `noisy-0.4` share the `noisy` colour (its family); runs of one family are told apart
by marker. Unknown labels are drawn in `UNKNOWN_COLOUR`.
"""

from __future__ import annotations

from probes.generations import reward_family

REWARD_COLOURS: dict[str, str] = {
    "true": "#0072B2",       # blue
    "majority": "#56B4E9",   # sky blue
    "format": "#009E73",     # bluish green
    "random": "#E69F00",     # orange
    "incorrect": "#D55E00",  # vermillion
    "noisy": "#CC79A7",      # reddish purple
    "rpr": "#F0E442",        # yellow
    "sft": "#000000",        # black
    "none": "#999999",       # grey
}
UNKNOWN_COLOUR = "#8c564b"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def reward_colour(reward: str | None) -> str:
    """The colour of `reward`'s family (`noisy-0.3` → noisy)."""
    return REWARD_COLOURS.get(reward_family(reward), UNKNOWN_COLOUR) if reward else UNKNOWN_COLOUR

"""The default model's folders: the 1,000 ImageNet classes grouped by hand into everyday folders.

Curated from the class list torchvision ships in its weights metadata
(`EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]`). Indices 0-397 are all animals;
everything not listed below is an "objects" class. A test checks that the groups cover every
index exactly once.
"""

from __future__ import annotations

ANIMALS = list(range(0, 398))

FOOD = [*range(923, 958), *range(959, 970)]  # dishes, bread, vegetables, fruit, drinks

NATURE = [958, *range(970, 981), *range(984, 999)]  # hay, landscapes, flowers, fungi

VEHICLES = [
    403, 404, 405, 407, 408, 436, 444, 450, 466, 468, 472, 475, 479, 484, 510, 511, 537,
    547, 554, 555, 561, 565, 569, 573, 575, 576, 586, 595, 603, 609, 612, 625, 627, 628,
    654, 656, 660, 661, 665, 670, 671, 675, 690, 694, 705, 717, 734, 751, 757, 779, 780,
    802, 803, 812, 814, 817, 820, 829, 833, 847, 856, 864, 866, 867, 870, 871, 874, 880,
    895, 908, 913, 914,
]  # fmt: skip

BUILDINGS = [
    406, 410, 415, 421, 424, 425, 437, 442, 449, 454, 460, 467, 483, 489, 497, 498, 500,
    509, 525, 536, 538, 540, 562, 580, 582, 598, 624, 634, 646, 649, 663, 668, 682, 698,
    703, 706, 716, 718, 727, 743, 755, 762, 788, 819, 821, 825, 832, 839, 853, 858, 860,
    863, 865, 873, 884, 888, 900, 912, 915,
]  # fmt: skip

DOCUMENTS = [
    446, 487, 508, 527, 549, 590, 620, 664, 681, 713, 742, 781, 782, 810, 851, 878, 916,
    917, 918, 919, 921, 922,
]  # fmt: skip

CLOTHING = [
    399, 400, 411, 433, 439, 443, 445, 451, 452, 457, 459, 474, 496, 501, 502, 514, 515,
    552, 568, 578, 601, 608, 610, 614, 617, 630, 638, 639, 652, 655, 658, 667, 689, 697,
    735, 770, 774, 775, 793, 796, 806, 808, 824, 834, 836, 837, 841, 842, 869, 887, 906,
]  # fmt: skip

_NAMED = {
    "animals": ANIMALS,
    "food": FOOD,
    "nature": NATURE,
    "vehicles": VEHICLES,
    "buildings": BUILDINGS,
    "documents": DOCUMENTS,
    "clothing": CLOTHING,
}


def imagenet_groups() -> dict[str, list[int]]:
    """Folder name -> ImageNet class indices; "objects" takes every index not named above."""
    named = {index for indices in _NAMED.values() for index in indices}
    return {**_NAMED, "objects": [i for i in range(1000) if i not in named]}

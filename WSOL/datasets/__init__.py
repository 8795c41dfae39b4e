"""Dataset lists -> samples, and the image transforms of the original BAS loaders.

Layouts read: the CUB-200-2011 release, wsolevaluation's metadata (CUB, ILSVRC, OpenImages),
class folders (ILSVRC train), and the official releases of Stanford Dogs, Stanford Cars and
FGVC-Aircraft (their MATLAB lists need scipy). Every list is checked while the sample list is
built, so bad input stops at once with ``path:line: problem`` (``path: entry N: problem`` in a
MATLAB file) instead of failing later inside a data-loader worker; every path a list gives stays
inside its folder (``bas.data.relative_path``), and so does every output named after an id. Only
an image that fails to decode is found at load time, where a box off its image is warned of.

Boxes are (x0, y0, x1, y1) in original image pixels, as the lists give them. The CUB release
gives (x, y, width, height); we take x1 = x + width, y1 = y + height: exactly the original BAS
list (test_bounding_box.txt). wsolevaluation's CUB localization.txt holds the same boxes clipped
to (width - 1, height - 1). Cars and Aircraft give 1-based pixel indices with the max inclusive;
they become the same kind of pixel-edge box, (xmin - 1, ymin - 1, xmax, ymax).
"""

from WSOL.datasets.aircraft import aircraft_class_names, fgvc_aircraft
from WSOL.datasets.cars import cars_class_names, stanford_cars
from WSOL.datasets.cub import cub_release
from WSOL.datasets.dogs import dogs_class_names, stanford_dogs
from WSOL.datasets.folders import class_folders
from WSOL.datasets.images import ImageDataset
from WSOL.datasets.samples import Sample, num_classes
from WSOL.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, ten_crop_transform, test_transform, train_transform
from WSOL.datasets.wsolevaluation import wsol_metadata

__all__ = [
    "Sample",
    "num_classes",
    "cub_release",
    "wsol_metadata",
    "class_folders",
    "dogs_class_names",
    "stanford_dogs",
    "cars_class_names",
    "stanford_cars",
    "aircraft_class_names",
    "fgvc_aircraft",
    "ImageDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ten_crop_transform",
    "test_transform",
    "train_transform",
]

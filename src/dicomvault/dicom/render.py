"""Rendering one frame of a stored image for display: the consumer images of WADO-RS
rendered and thumbnail resources (PS3.18 8.3.5.1, 8.7.4, 10.4.1.1.3).

The pipeline is the grayscale and color part of PS3.4 N.2 "Pixel Transformation
Sequence", as pydicom implements its steps:

1. decode the one frame asked for (:func:`pydicom.pixels.pixel_array` with ``index``:
   for a native or encapsulated file read from a stream only that frame is read);
   YBR_FULL and YBR_FULL_422 come out as RGB (pydicom converts unless the codec did);
2. grayscale (MONOCHROME1/2): the Modality LUT or Rescale Slope/Intercept (PS3.3
   C.11.1, :func:`~pydicom.pixels.apply_modality_lut`), then the VOI transformation
   (PS3.3 C.11.2): the ``window`` the client gave, else the image's first VOI LUT,
   else its first Window Center/Width (with its VOI LUT Function), else the frame's
   minimum–maximum; MONOCHROME1 is inverted. Enhanced multi-frame images take Pixel
   Value Transformation and Frame VOI LUT from the frame's functional groups (PS3.3
   C.7.6.16.2.9, C.7.6.16.2.10);
3. PALETTE COLOR through its palette (PS3.3 C.7.6.3.1.5,
   :func:`~pydicom.pixels.apply_color_lut`); RGB as is;
4. scaled to 8 bits per channel (PS3.18 8.7.4: "no more than 8 bits per channel"): a
   value ``y`` in the output range ``[lo, hi]`` of the last transformation becomes
   ``clip(rint((y - lo) / (hi - lo) * 255), 0, 255)`` (:func:`to_8bit`);
5. the viewport (PS3.18 8.3.5.1.3): the source region ``sx,sy,sw,sh`` cut out (a
   negative ``sw``/``sh`` flips), then scaled to fit ``vw × vh`` keeping the aspect
   ratio (Lanczos); an image already of the fitted size is not resampled;
6. encoded as baseline JPEG (PS3.18 8.7.4 requires the baseline process) or PNG.

Everything here is synchronous and CPU-bound: callers in ``web/`` run it in the thread
pool.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
)
from pydicom.pixels.utils import pixel_array

JPEG: Final = "image/jpeg"
PNG: Final = "image/png"
#: The Rendered Media Types produced, in order of preference (PS3.18 Table 8.7.4-1:
#: image/jpeg is the default for single-frame images).
MEDIA_TYPES: Final = (JPEG, PNG)

#: ``window`` function names (PS3.18 8.3.5.1.4) → VOI LUT Function (0028,1056) terms
#: (PS3.3 C.11.2.1.2, C.11.2.1.3).
WINDOW_FUNCTIONS: Final = {
    "linear": "LINEAR",
    "linear-exact": "LINEAR_EXACT",
    "sigmoid": "SIGMOID",
}

#: JPEG quality when the client gives none (PS3.18 8.3.5.1.2 leaves it to the server).
DEFAULT_QUALITY: Final = 90

_DEFLATED: Final = "1.2.840.10008.1.2.1.99"
_RGB_LIKE: Final = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
_GRAY: Final = frozenset({"MONOCHROME1", "MONOCHROME2"})

U8 = npt.NDArray[np.uint8]


class RenderError(Exception):
    """The instance cannot be rendered; the message says why."""


class NoPixelData(RenderError):
    """The instance is not an image (no Pixel Data): nothing to render."""


class CannotDecode(RenderError):
    """The pixel data cannot be decoded or displayed here (unsupported compression,
    photometric interpretation, corrupt data)."""


class FrameOutOfRange(RenderError):
    """A frame number below 1 or above Number of Frames."""

    def __init__(self, frame: int, frames: int) -> None:
        super().__init__(f"frame {frame} is not between 1 and {frames}, the number of frames")
        self.frame = frame
        self.frames = frames


class RegionOutsideImage(RenderError):
    """The viewport's source region does not lie within the image."""


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.18 8.3.5.1.4 ``window=center,width,function``).

    ``function`` is the VOI LUT Function term: ``LINEAR``, ``LINEAR_EXACT``, ``SIGMOID``.
    """

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class Viewport:
    """PS3.18 8.3.5.1.3 ``viewport=vw,vh[,sx,sy,sw,sh]``: the output box and an
    optional source region in pixel coordinates of the frame (``None``: the default —
    from 0, to the edge of the image)."""

    width: int
    height: int
    sx: int | None = None
    sy: int | None = None
    sw: int | None = None
    sh: int | None = None


class StoredImage:
    """One stored instance opened for rendering: its header read, frames decoded on
    demand.

    Parameters
    ----------
    stream : binary file
        The stored Part 10 bytes, seekable (the blob store's file).

    Raises
    ------
    NoPixelData
        Not an image.
    CannotDecode
        The bytes are not a readable DICOM file.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        try:
            self.header = dcmread(stream, stop_before_pixels=True, force=True)
        except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
            raise CannotDecode(f"the stored file cannot be read: {exc}") from exc
        if "Rows" not in self.header or "Columns" not in self.header:
            raise NoPixelData("the instance has no image pixel data")
        meta = getattr(self.header, "file_meta", None)
        self.transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta else ""
        self.number_of_frames = _int(self.header.get("NumberOfFrames"), default=1)
        self._full: Dataset | None = None

    def check_frame(self, frame: int) -> None:
        """Raise :class:`FrameOutOfRange` unless ``1 <= frame <= number_of_frames``."""
        if not 1 <= frame <= self.number_of_frames:
            raise FrameOutOfRange(frame, self.number_of_frames)

    def decode(self, frame: int) -> npt.NDArray[np.generic]:
        """The decoded pixels of ``frame`` (1-based, PS3.18 8.3.4 frame numbers)."""
        self.check_frame(frame)
        try:
            if self.transfer_syntax == _DEFLATED:
                # pydicom's frame-wise reader works on the raw stream; a deflated data
                # set must be inflated (read whole) first.
                if self._full is None:
                    self._stream.seek(0)
                    self._full = dcmread(self._stream, force=True)
                return pixel_array(self._full, index=frame - 1)
            self._stream.seek(0)
            return pixel_array(self._stream, index=frame - 1)
        except AttributeError as exc:  # pydicom's "no Pixel Data element"
            raise NoPixelData(f"the instance has no pixel data: {exc}") from exc
        except Exception as exc:  # any codec failure: name the syntax and the reason
            reason = " ".join(str(exc).split())
            raise CannotDecode(
                f"the pixel data (transfer syntax {self.transfer_syntax or 'unknown'}) "
                f"cannot be decoded: {reason}"
            ) from exc

    def frame_attributes(self, frame: int) -> Dataset:
        """The attributes that drive display of ``frame``: the Image Pixel, Modality
        LUT, VOI LUT and Palette modules of the header, overridden for enhanced
        multi-frame images by the frame's Pixel Value Transformation and Frame VOI LUT
        functional groups (shared first, then per-frame; PS3.3 C.7.6.16)."""
        attrs = Dataset()
        for element in self.header:
            if element.tag.group == 0x0028:
                attrs.add(element)
        for macro in _functional_groups(self.header, frame - 1):
            for name in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
                items = macro.get(name)
                if items:
                    for element in items[0]:
                        attrs.add(element)
        if hasattr(self.header, "file_meta"):
            attrs.file_meta = self.header.file_meta
        return attrs

    def display(self, frame: int, window: Window | None = None) -> U8:
        """``frame`` as 8-bit display values: ``(rows, columns)`` grayscale or
        ``(rows, columns, 3)`` RGB (module docstring, steps 1–4)."""
        pixels = self.decode(frame)
        return display_pixels(pixels, self.frame_attributes(frame), window)


def _int(value: object, *, default: int) -> int:
    try:
        number = int(str(value)) if value not in (None, "") else default
    except ValueError:
        return default
    return number if number > 0 else default


def _functional_groups(header: Dataset, index: int) -> list[Dataset]:
    found: list[Dataset] = []
    shared = header.get("SharedFunctionalGroupsSequence")
    if shared:
        found.append(shared[0])
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        found.append(per_frame[index])
    return found


def to_8bit(values: npt.NDArray[np.generic], lo: float, hi: float) -> U8:
    """Scale ``values`` of the range ``[lo, hi]`` to 0–255:
    ``clip(rint((y - lo) / (hi - lo) * 255), 0, 255)``; an empty range gives 0."""
    if hi == lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - lo) / (hi - lo) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def windowing_range(attrs: Dataset) -> tuple[float, float]:
    """The output range ``[y_min, y_max]`` of a window (PS3.3 C.11.2.1.2): the range of
    the Modality LUT output, as :func:`pydicom.pixels.apply_windowing` uses it."""
    if attrs.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(attrs.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(attrs.BitsStored)
    if int(attrs.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope = attrs.get("RescaleSlope")
    intercept = attrs.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo = lo * float(slope) + float(intercept)
        hi = hi * float(slope) + float(intercept)
    return lo, hi


def _with_window(attrs: Dataset, window: Window) -> Dataset:
    windowed = Dataset()
    for element in attrs:
        if element.keyword not in ("VOILUTSequence", "WindowCenter", "WindowWidth"):
            windowed.add(element)
    windowed.WindowCenter = window.center
    windowed.WindowWidth = window.width
    windowed.VOILUTFunction = window.function
    return windowed


def _own_window_usable(attrs: Dataset) -> bool:
    if "WindowCenter" not in attrs or "WindowWidth" not in attrs:
        return False
    width_element = attrs["WindowWidth"]
    width = width_element.value[0] if width_element.VM > 1 else width_element.value
    if width is None or width == "":
        return False
    function = str(attrs.get("VOILUTFunction", "LINEAR")).upper()
    if function not in WINDOW_FUNCTIONS.values():
        return False
    return float(width) >= 1 if function == "LINEAR" else float(width) > 0


def display_pixels(
    pixels: npt.NDArray[np.generic], attrs: Dataset, window: Window | None = None
) -> U8:
    """Decoded pixels of one frame → 8-bit display values (module docstring, steps 2–4).

    Parameters
    ----------
    pixels : numpy.ndarray
        One decoded frame, as :func:`pydicom.pixels.pixel_array` returns it.
    attrs : Dataset
        The frame's display attributes (:meth:`StoredImage.frame_attributes`).
    window : Window, optional
        Replaces the image's own VOI transformation.

    Raises
    ------
    CannotDecode
        A photometric interpretation that cannot be displayed (e.g. YBR_PARTIAL_420).
    """
    photometric = str(attrs.get("PhotometricInterpretation", "")).strip().upper()
    if photometric in _GRAY:
        if pixels.ndim != 2:
            raise CannotDecode(f"{photometric} pixel data with {pixels.ndim} dimensions")
        gray = _grayscale(pixels, attrs, window)
        return (255 - gray).astype(np.uint8) if photometric == "MONOCHROME1" else gray
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, attrs)
        bits = int(attrs.RedPaletteColorLookupTableDescriptor[2])
        return to_8bit(rgb, 0.0, float(2**bits - 1))
    if photometric in _RGB_LIKE:
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise CannotDecode(f"{photometric} pixel data of shape {pixels.shape}")
        if pixels.dtype == np.uint8:
            return pixels.astype(np.uint8, copy=False)
        bits = int(attrs.get("BitsStored", 8 * pixels.dtype.itemsize))
        return to_8bit(pixels, 0.0, float(2**bits - 1))
    raise CannotDecode(f"photometric interpretation {photometric or '(none)'} is not rendered")


def _grayscale(pixels: npt.NDArray[np.generic], attrs: Dataset, window: Window | None) -> U8:
    values = apply_modality_lut(pixels, attrs)
    if window is not None:
        lo, hi = windowing_range(attrs)
        return to_8bit(apply_windowing(values, _with_window(attrs, window)), lo, hi)
    if attrs.get("VOILUTSequence"):
        if not np.issubdtype(values.dtype, np.integer):
            # A VOI LUT is indexed by integers (PS3.3 C.11.2.1.1).
            values = np.rint(values).astype(np.int64)
        item = attrs.VOILUTSequence[0]
        return to_8bit(apply_voi(values, attrs, 0), 0.0, float(2 ** int(item.LUTDescriptor[2]) - 1))
    if _own_window_usable(attrs):
        lo, hi = windowing_range(attrs)
        return to_8bit(apply_windowing(values, attrs, 0), lo, hi)
    return to_8bit(values, float(np.min(values)), float(np.max(values)))


def apply_viewport(image: U8, viewport: Viewport | None, *, upscale: bool = True) -> U8:
    """Cut the source region of ``viewport`` out of ``image`` and scale it to fit
    ``vw × vh`` keeping the aspect ratio (PS3.18 8.3.5.1.3); ``upscale=False`` only
    shrinks (thumbnails of small images stay as they are).

    Raises
    ------
    RegionOutsideImage
        The source region is empty or leaves the image.
    """
    if viewport is None:
        return image
    rows, columns = image.shape[0], image.shape[1]
    sx = viewport.sx or 0
    sy = viewport.sy or 0
    sw = viewport.sw if viewport.sw is not None else columns - sx
    sh = viewport.sh if viewport.sh is not None else rows - sy
    x0, x1 = sorted((sx, sx + sw))
    y0, y1 = sorted((sy, sy + sh))
    if x0 < 0 or y0 < 0 or x1 > columns or y1 > rows or x0 == x1 or y0 == y1:
        raise RegionOutsideImage(
            f"viewport: source region {sx},{sy},{sw},{sh} is not within the {columns}×{rows} image"
        )
    region = image[y0:y1, x0:x1]
    if sw < 0:
        region = region[:, ::-1]
    if sh < 0:
        region = region[::-1, :]
    height, width = region.shape[0], region.shape[1]
    scale = min(viewport.width / width, viewport.height / height)
    if not upscale:
        scale = min(scale, 1.0)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return np.ascontiguousarray(region)
    resized = Image.fromarray(np.ascontiguousarray(region)).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def encode(image: U8, media_type: str, quality: int = DEFAULT_QUALITY) -> bytes:
    """Encode 8-bit display values as ``image/jpeg`` (baseline, PS3.18 8.7.4) or
    ``image/png``."""
    picture = Image.fromarray(np.ascontiguousarray(image))
    out = io.BytesIO()
    if media_type == JPEG:
        picture.save(out, format="JPEG", quality=quality, progressive=False)
    elif media_type == PNG:
        picture.save(out, format="PNG")
    else:
        raise ValueError(f"not a rendered media type of this server: {media_type}")
    return out.getvalue()


def render(
    image: StoredImage,
    frame: int,
    media_type: str,
    *,
    window: Window | None = None,
    viewport: Viewport | None = None,
    quality: int = DEFAULT_QUALITY,
    upscale: bool = True,
) -> bytes:
    """One frame of ``image`` rendered and encoded (the whole pipeline).

    Raises
    ------
    RenderError
        :class:`FrameOutOfRange`, :class:`NoPixelData`, :class:`CannotDecode`,
        :class:`RegionOutsideImage`.
    """
    display = image.display(frame, window)
    return encode(apply_viewport(display, viewport, upscale=upscale), media_type, quality)

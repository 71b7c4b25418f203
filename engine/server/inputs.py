"""Input images of a request: uploads, gallery references, and the checks they pass.

A request names its images by reference (`gallery:<id>` or `upload:<sha256>`),
never by a path on the engine's machine, so a frontend elsewhere works the
same. Uploads are content-addressed files under `$DREAMHALL_HOME/uploads`,
kept so a result's `init_image` can always be looked at again.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from engine.client.answers import Upload
from engine.client.errors import InputError
from engine.client.schema import ControlUnit, DreamRequest, Requester, Scope, gallery_id
from engine.device.runner import Resolved
from engine.server.control_maps import Annotate, preprocess
from gallery.files import BadImage, decode_image, relative_path, write_content_addressed
from gallery.schemas import ImagePublic
from gallery.store import ImageNotFound, ImageStore

MAX_INPUT_PIXELS = 4096 * 4096


class Inputs:
    """Stores uploads and opens the images a request refers to."""

    def __init__(self, store: ImageStore, uploads_dir: Path, *, annotators: Path | None = None,
                 annotate: Annotate | None = None) -> None:  # fmt: skip
        self.store = store
        self.uploads_dir = uploads_dir
        self.annotators = annotators  # weights of the ControlNet annotators that need them (depth, pose, ...)
        self.annotate = annotate  # runs those where the models run (the runner's annotate)

    def save_upload(self, data: bytes) -> Upload:
        image = decode_image(data, max_pixels=MAX_INPUT_PIXELS, mode="RGBA")
        # One format on disk; metadata of the original is not needed.
        sha, _ = write_content_addressed(self.uploads_dir, png_bytes(image))
        return Upload(ref=f"upload:{sha}", sha256=sha, width=image.width, height=image.height)

    def _parent(self, ref: str, requester: Requester) -> ImagePublic | None:
        image_id = gallery_id(ref)
        if image_id is None:
            return None
        try:
            image = self.store.get(image_id)
        except ImageNotFound:
            raise ImageNotFound(f"image {image_id} is not in the gallery (deleted, or never made)") from None
        scope = Scope.of(requester)
        if scope is not None and not scope.allows(image):
            # Tenant isolation (a DM sees only its user's DM images): the answer for an image that does not exist.
            raise ImageNotFound(f"image {image_id} is not in this server's gallery")
        return image

    def _path(self, ref: str, parent: ImagePublic | None) -> Path:
        if parent is not None:
            return self.store.file_path(parent)
        path = self.uploads_dir / relative_path(ref.removeprefix("upload:"))
        if not path.is_file():
            raise ImageNotFound(f"no upload {ref}; send the image to POST /v1/uploads first")
        return path

    def _size(self, ref: str, request: DreamRequest) -> tuple[tuple[int, int], ImagePublic | None]:
        parent = self._parent(ref, request.requester)
        if parent is not None:
            return (parent.width, parent.height), parent
        with Image.open(self._path(ref, None)) as im:
            return im.size, None

    def check(self, request: DreamRequest) -> tuple[ImagePublic | None, tuple[int, int] | None]:
        """Cheap checks at submit time, so a bad reference is an immediate error, not a failed job.

        Returns the init image's gallery record (None for uploads and requests without one) and its size
        (from the gallery row or the file's header: nothing is decoded but an inpaint mask, whose pixels
        say whether it repaints anything)."""
        for i, control in enumerate(request.controls):
            # A bad or empty map refuses the job; a weight annotator runs with the job (only its file is checked here).
            self.control_map(control, request.requester, label=f"control {i + 1}", annotated=False)
        for reference in request.references:
            self._open(self._path(reference.image, self._parent(reference.image, request.requester)), "RGB")
        if request.init_image is None:
            return None, None
        size, parent = self._size(request.init_image, request)
        if request.init_mask is not None:
            mask_size, mask_parent = self._size(request.init_mask, request)
            if mask_size != size:
                raise InputError(
                    f"the mask is {mask_size[0]}x{mask_size[1]} but the init image is {size[0]}x{size[1]}; "
                    "masks must be the same size as the image they cover"
                )
            if request.mode == "inpaint" and not self._open(self._path(request.init_mask, mask_parent), "L").getbbox():
                raise InputError("the mask is all black: nothing to repaint (white marks what to repaint)")
        return parent, size

    def load(self, request: DreamRequest) -> Resolved:
        resolved = Resolved()
        if request.init_image is not None:
            resolved.parent = self._parent(request.init_image, request.requester)
            if request.mode != "variation":  # a variation's parent gives its seed, not its pixels
                resolved.init = self._open(self._path(request.init_image, resolved.parent), "RGBA")
        if request.init_mask is not None:
            mask_parent = self._parent(request.init_mask, request.requester)
            resolved.mask = self._open(self._path(request.init_mask, mask_parent), "L")
        resolved.controls = [self.control_map(c, request.requester) for c in request.controls]
        resolved.references = [self._open(self._path(r.image, self._parent(r.image, request.requester)), "RGB")
                               for r in request.references]  # fmt: skip
        return resolved

    def control_map(self, control: ControlUnit, requester: Requester, *, label: str = "control",
                    annotated: bool = True) -> Image.Image:  # fmt: skip
        """A control's map: its image, preprocessed by its type (what the ControlNet reads)."""
        picture = self._open(self._path(control.image, self._parent(control.image, requester)), "RGB")
        try:
            return preprocess(picture, control.type, threshold_a=control.threshold_a, threshold_b=control.threshold_b,
                              annotators=self.annotators, annotate=self.annotate, check_only=not annotated)  # fmt: skip
        except InputError as e:
            raise InputError(f"{label}: {e}") from None

    def preview_map(self, data: bytes, type: str, threshold_a: float | None, threshold_b: float | None) -> bytes:
        """The map of a picture sent as bytes, as PNG (A1111's /controlnet/detect)."""
        try:
            picture = decode_image(data, max_pixels=MAX_INPUT_PIXELS, mode="RGB")
        except BadImage as e:
            raise InputError(f"not an image this engine can read: {e}") from None
        control = preprocess(picture, type, threshold_a=threshold_a, threshold_b=threshold_b,
                             annotators=self.annotators, annotate=self.annotate)  # fmt: skip
        return png_bytes(control)

    @staticmethod
    def _open(path: Path, mode: str) -> Image.Image:
        try:
            return decode_image(path.read_bytes(), max_pixels=MAX_INPUT_PIXELS, mode=mode)
        except (OSError, BadImage) as e:
            raise InputError(f"could not read input image {path.name}: {e}") from e


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()

"""Video files (PyAV): a clip's frames and masks from files, and the harmonized clip written with its
audio kept.

* :func:`probe` — frame rate, size and audio of a video file (an unreadable file or one without a video
  stream is a :class:`~r2r.errors.R2RUserError`);
* :class:`VideoFrames` — a :class:`~r2r.video.clip.FrameSource` decoding a file front to back (decoded
  again for each pass, never held whole);
* :func:`open_masks` — ``--mask``: an image file (one mask for every frame) or a mask video (one mask per
  frame: its luma, white = object; values within 8/255 of black or white are snapped to 0 / 1, so
  compression noise neither leaks into the background nor softens the object);
* :class:`VideoWriter` — H.264 (``.mp4``, ``.mov``, ``.mkv``; yuv420p, or yuv444p for odd sizes, which
  4:2:0 cannot hold) or VP9 (``.webm``) at the input's frame rate (constant: a variable-rate input
  becomes its average rate) and size, written to a temporary file renamed into place at the end
  (:func:`r2r.fileio.atomic_writer`: an interrupted or failed run leaves nothing behind). The input's
  first audio stream is copied packet for packet when the output container can hold its codec, else
  re-encoded (AAC; Opus for ``.webm``); a container without audio gives a video without audio.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import R2RUserError
from .clip import ArrayMasks, as_mask

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm")
#: output container format and video codec per extension
CONTAINERS = {".mp4": ("mp4", "libx264"), ".mov": ("mov", "libx264"), ".mkv": ("matroska", "libx264"),
              ".webm": ("webm", "libvpx-vp9")}
#: audio codecs each container takes as they are (others are re-encoded to the first codec listed)
AUDIO_COPY = {"mp4": ("aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"),
              "mov": ("aac", "mp3", "alac", "ac3", "eac3", "pcm_s16le", "pcm_s24le", "pcm_f32le"),
              "matroska": None,  # anything
              "webm": ("opus", "vorbis")}
AUDIO_ENCODER = {"mp4": "aac", "mov": "aac", "matroska": "aac", "webm": "libopus"}
#: H.264 / VP9 quality (constant rate factor: lower = better; 18 is visually lossless for H.264)
CRF = 18
#: mask videos: values this close to black / white are snapped to 0 / 1
MASK_SNAP = 8 / 255


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: Fraction
    size: tuple[int, int]  # (H, W)
    frames: int | None  # from the container (may be missing or approximate)
    audio_codec: str | None


def _av():
    """PyAV (ComfyUI installs it; elsewhere ``pip install av``)."""
    try:
        import av
    except ImportError:
        raise R2RUserError("Reading and writing video files needs PyAV, which is not installed here: pip install av "
                           "(ComfyUI's own requirements include it).") from None
    return av


def _open(path, option: str):
    from ..fileio import check_input_file

    av = _av()

    check_input_file(path, kind=option)
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise R2RUserError(f"{option}: {path} cannot be read as a video ({exc}). Give a video file (mp4, mov, mkv, "
                           "webm...) that a player opens.") from None


def probe(path, option: str = "--video") -> VideoInfo:
    """Frame rate, size, frame count (as the container states it) and audio codec of a video file."""
    with contextlib.closing(_open(path, option)) as container:
        if not container.streams.video:
            raise R2RUserError(f"{option}: {path} has no video stream; give a video file.")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or rate <= 0:
            log.warning("%s: %s states no frame rate; writing at 25 fps", option, path)
            rate = Fraction(25)
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        size = (int(stream.codec_context.height), int(stream.codec_context.width))
        return VideoInfo(Path(path), Fraction(rate), size, int(stream.frames) or None, audio)


class VideoFrames:
    """The frames of a video file as ``HxWx3`` uint8 RGB, decoded front to back on every read."""

    def __init__(self, path, option: str = "--video", gray: bool = False):
        self.info = probe(path, option)
        self.path, self.option, self.gray = Path(path), option, gray
        self.count: int | None = None  # known after the first full read

    def read(self, indices: Iterable[int] | None = None):
        av = _av()
        wanted = None if indices is None else sorted(set(int(i) for i in indices))
        if wanted is not None and not wanted:
            return
        last = None if wanted is None else wanted[-1]
        want = None if wanted is None else set(wanted)
        n = 0
        with contextlib.closing(_open(self.path, self.option)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            try:
                for frame in container.decode(stream):
                    if want is None or n in want:
                        yield n, frame.to_ndarray(format="gray" if self.gray else "rgb24")
                    n += 1
                    if last is not None and n > last:
                        return
            except av.error.FFmpegError as exc:
                raise R2RUserError(f"{self.option}: decoding {self.path} failed at frame {n} ({exc}); the file is "
                                   "damaged or truncated. Re-export it, or cut the clip before that frame.") from None
        if wanted is None:
            self.count = n


class VideoMasks(VideoFrames):
    """A mask video: frame ``i``'s luma is the mask of frame ``i`` (white = object), snapped near 0 / 1."""

    def __init__(self, path, option: str = "--mask"):
        super().__init__(path, option, gray=True)

    def read(self, indices=None):
        for i, grey in super().read(indices):
            m = as_mask(grey)
            m[m <= MASK_SNAP] = 0.0
            m[m >= 1.0 - MASK_SNAP] = 1.0
            yield i, m


def is_image_file(path) -> bool:
    from ..fileio import IMAGE_EXTENSIONS

    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def open_masks(path, option: str = "--mask"):
    """An image file (one mask for every frame) or a mask video (one per frame) -> a mask source."""
    if is_image_file(path):
        from ..fileio import read_mask

        try:
            return ArrayMasks(read_mask(path))
        except R2RUserError as exc:
            raise R2RUserError(f"{option}: {exc}") from None
    return VideoMasks(path, option)


class VideoWriter:
    """``with VideoWriter(out, fps, (H, W), audio_from=input) as w: w.write(frame)`` (see the module docstring)."""

    def __init__(self, path, fps, size: tuple[int, int], audio_from=None):
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in CONTAINERS:
            raise R2RUserError(f"The output video must end in {', '.join(VIDEO_EXTENSIONS)}; got {self.path.name}.")
        self.format, self.codec = CONTAINERS[ext]
        self.fps, self.size, self.audio_from = Fraction(fps), (int(size[0]), int(size[1])), audio_from
        self.frames = 0
        self.audio = "none"
        self._writer: Any = None
        self._container: Any = None
        self._stream: Any = None
        self._source: Any = None
        self._audio_out: Any = None
        self._resampler: Any = None

    def __enter__(self):
        from ..fileio import atomic_writer

        av = _av()

        self._writer = atomic_writer(self.path, what="output video")
        tmp = self._writer.__enter__()
        try:
            self._container = av.open(str(tmp), mode="w", format=self.format)
            h, w = self.size
            stream = self._container.add_stream(self.codec, rate=self.fps)
            stream.width, stream.height = w, h
            stream.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
            stream.options = {"crf": str(CRF)} if self.codec == "libx264" else {"crf": str(CRF + 12), "b": "0"}
            self._stream = stream
            if self.audio_from is not None:
                self._open_audio()
        except BaseException:
            self._abort()
            raise
        return self

    def write(self, frame: np.ndarray) -> None:
        """One ``HxWx3`` frame (uint8, or float in [0, 1])."""
        av = _av()
        if frame.dtype != np.uint8:
            frame = np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        out.pts = self.frames
        out.time_base = 1 / self.fps
        for packet in self._stream.encode(out.reformat(format=self._stream.pix_fmt)):
            self._container.mux(packet)
        self.frames += 1

    def __exit__(self, kind, exc, tb):
        if kind is not None:
            self._abort(kind, exc, tb)
            return False
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            if self._source is not None:
                self._add_audio()
            self._container.close()
        except BaseException as error:
            self._abort(type(error), error, error.__traceback__)
            raise
        self._writer.__exit__(None, None, None)
        return False

    def _abort(self, kind=None, exc=None, tb=None):
        if self._source is not None:
            with contextlib.suppress(Exception):
                self._source.close()
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
        if kind is None:
            kind, exc = RuntimeError, RuntimeError("output video not finished")
        with contextlib.suppress(BaseException):
            self._writer.__exit__(kind, exc, tb)  # removes the temporary file

    def _open_audio(self) -> None:
        """Add the audio stream before the first packet is written (a container's streams are fixed then)."""
        av = _av()
        self._source = av.open(str(self.audio_from))
        if not self._source.streams.audio:
            self._source.close()
            self._source = None
            return
        a_in = self._source.streams.audio[0]
        copyable = AUDIO_COPY[self.format]
        name = a_in.codec_context.name
        if copyable is None or name in copyable:
            self._audio_out = self._container.add_stream_from_template(a_in)
            self._resampler = None
            self.audio = f"copied ({name})"
            return
        encoder = AUDIO_ENCODER[self.format]
        rate = 48000 if encoder == "libopus" else a_in.codec_context.sample_rate
        self._audio_out = self._container.add_stream(encoder, rate=rate)
        self._resampler = av.AudioResampler(format=self._audio_out.codec_context.format,
                                            layout=self._audio_out.codec_context.layout, rate=rate)
        self.audio = f"re-encoded {name} -> {encoder}"
        log.info("audio: %s cannot go into %s as it is; %s", name, self.format, self.audio)

    def _add_audio(self) -> None:
        """The input's first audio stream: copied packet for packet, or re-encoded (module docstring)."""
        source, a_out = self._source, self._audio_out
        with contextlib.closing(source):
            a_in = source.streams.audio[0]
            if self._resampler is None:
                for packet in source.demux(a_in):
                    if packet.dts is None:
                        continue
                    packet.stream = a_out
                    self._container.mux(packet)
                return
            for frame in source.decode(a_in):
                for piece in self._resampler.resample(frame):
                    for packet in a_out.encode(piece):
                        self._container.mux(packet)
            for piece in self._resampler.resample(None):
                for packet in a_out.encode(piece):
                    self._container.mux(packet)
            for packet in a_out.encode(None):
                self._container.mux(packet)

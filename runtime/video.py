"""Reading a video file frame by frame through OpenCV, past damaged stretches.

OpenCV's ``read()`` returns False both at the end of a file and on a frame it cannot decode; taking the first
False as the end stops a file with one damaged frame there, while OpenCV decodes the frames after it. Here a
failed read is retried: the file ends after ``max_failures`` failed reads in a row, and failed reads that later
frames follow are counted as ``damaged``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["VideoFrames", "read_frames"]


class VideoFrames:
    def __init__(self, cap, max_failures: int = 25) -> None:
        """``cap``: an opened ``cv2.VideoCapture`` (or anything with ``read()``)."""
        self.cap, self.max_failures = cap, int(max_failures)
        self.damaged = 0  # unreadable frames skipped in the middle of the file
        self.ended = False

    def read(self) -> np.ndarray | None:
        """The next decodable frame, or None at the end of the file."""
        if self.ended:
            return None
        failed = 0
        while failed < self.max_failures:
            ok, frame = self.cap.read()
            if ok and frame is not None:
                self.damaged += failed
                return frame
            failed += 1
        self.ended = True
        return None


def read_frames(path: str) -> list[np.ndarray]:
    """Every decodable frame of a video file, in order (damaged frames skipped)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames, reader = [], VideoFrames(cap)
    while (f := reader.read()) is not None:
        frames.append(f)
    cap.release()
    return frames

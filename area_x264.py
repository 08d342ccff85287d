"""The plain alternative the benchmark times inference.py against: decode, area-downscale, x264.

    python area_x264.py IN.mp4 OUT.mp4 SCALE CRF PRESET

What `ffmpeg -i IN -vf scale=iw/S:ih/S:flags=area -c:v libx264 -crf CRF -preset PRESET OUT` does,
with PyAV and OpenCV (no ffmpeg binary needed), as a whole process with nothing else imported.
"""
import sys

import av
import cv2


def main(src: str, dst: str, s: int, crf: int, preset: str) -> None:
    with av.open(src) as inp, av.open(dst, "w") as out:
        stream_in = inp.streams.video[0]
        stream_in.thread_type = "AUTO"
        stream = out.add_stream("libx264", rate=stream_in.average_rate)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for i, frame in enumerate(inp.decode(stream_in)):
            rgb = frame.to_ndarray(format="rgb24")
            small = cv2.resize(rgb, (rgb.shape[1] // s // 2 * 2, rgb.shape[0] // s // 2 * 2),
                               interpolation=cv2.INTER_AREA)
            if i == 0:
                stream.width, stream.height = small.shape[1], small.shape[0]
            out.mux(stream.encode(av.VideoFrame.from_ndarray(small, format="rgb24")))
        out.mux(stream.encode(None))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])

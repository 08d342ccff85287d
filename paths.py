"""Where things are: the shipped models, and the real models and footage that developers and CI
have beside the repo in ../shared (a user's clone does not; everything that uses them says so)."""
from pathlib import Path

REPO = Path(__file__).resolve().parent
SHARED = REPO.parent / "shared"
SHARED_SEG_PT = SHARED / "models" / "yolov8n-seg-dq.pt"      # float COCO YOLOv8n-seg: what users have
SHARED_SEG_ONNX = SHARED / "models" / "yolov8n-seg_int8.onnx"  # int8 export, fixed 320: the weak detector
SHARED_DET_PT = SHARED / "models" / "yolov8n-dq.pt"           # COCO detector for detection F1
DAVIS = SHARED / "data" / "davis2016"
STATIC = SHARED / "data" / "static"
DAVIS_VAL = ("breakdance", "camel", "drift-chicane", "libby")  # held out of training (README, Training)

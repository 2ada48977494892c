"""The column names recognised in CSV inputs (image path, label, coarse label; classes files), most specific first."""
from __future__ import annotations

PATH_COLUMNS = (
    "path", "image_path", "img_path", "filepath", "file_path", "filename", "file_name",
    "file", "image", "img", "fname", "image_id", "id",
)  # fmt: skip
LABEL_COLUMNS = ("label", "class", "class_name", "category", "target", "y")
COARSE_COLUMNS = ("coarse", "coarse_label", "parent", "super_class", "superclass", "group")
# In a classes file with a header row:
CLASS_NAME_COLUMNS = ("name", "class", "class_name", "label", "category")
CLASS_ID_COLUMNS = ("id", "class_id", "label_id", "index")

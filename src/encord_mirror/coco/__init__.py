"""Encord label rows to COCO, without opencv or shapely at run time."""

-- The annotations table (tables/annotations/...): one record per object instance per frame and per
-- classification instance per frame, gzip JSON Lines, kept current by every run. Columns: see
-- encord_mirror/tables/records.py. Files starting with "_" (the table's marker) are ignored by Athena.
CREATE EXTERNAL TABLE IF NOT EXISTS ${DATABASE}.annotations (
  label_hash string,
  project_hash string,
  branch string,
  stage string,
  data_hash string,
  data_unit string,
  data_title string,
  data_type string,
  frame int,
  kind string,
  object_hash string,
  classification_hash string,
  uid string,
  feature_hash string,
  name string,
  value string,
  color string,
  shape string,
  width int,
  height int,
  bbox_x double,
  bbox_y double,
  bbox_w double,
  bbox_h double,
  bbox_x_px double,
  bbox_y_px double,
  bbox_w_px double,
  bbox_h_px double,
  rotation double,
  points array<struct<x: double, y: double>>,
  rle string,
  rle_width int,
  rle_height int,
  attributes array<struct<name: string, value: string, feature_hash: string, answer: string, answer_feature_hash: string>>,
  ranges array<array<bigint>>,
  created_by string,
  created_at string,
  last_edited_by string,
  last_edited_at string,
  confidence double,
  manual_annotation boolean,
  sha256 string
)
PARTITIONED BY (project string)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
LOCATION '${LAKE}/tables/annotations/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.project.type' = 'enum',
  'projection.project.values' = '${PROJECTS}',
  'storage.location.template' = '${LAKE}/tables/annotations/project=${project}/'
)

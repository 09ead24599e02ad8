-- The row objects (labels/...): one per live (label_hash, branch). The top-level keys of to_encord_dict()
-- that are scalars, the data units' titles and sizes, and the `mirror` block; the labels themselves are
-- nested maps keyed by hashes and frames: query them through the annotations table.
-- ${LAKE}: s3://bucket/prefix (no trailing slash); ${PROJECTS}: the project hashes, comma-separated.
-- Partition projection on `project` (no crawler, no MSCK REPAIR); branch and stage are in `mirror`.
CREATE EXTERNAL TABLE IF NOT EXISTS ${DATABASE}.labels (
  label_hash string,
  branch_name string,
  created_at string,
  last_edited_at string,
  data_hash string,
  dataset_hash string,
  dataset_title string,
  data_title string,
  data_type string,
  annotation_task_status string,
  is_shadow_data boolean,
  data_units map<string, struct<data_hash: string, data_title: string, data_type: string, data_link: string, width: int, height: int>>,
  mirror struct<format_version: int, project_hash: string, label_hash: string, data_hash: string, branch: string, stage: string, stage_uuid: string, stage_title: string, task_status: string, last_edited_at: string, sha256: string, synced_at: string>
)
PARTITIONED BY (project string)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
LOCATION '${LAKE}/labels/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.project.type' = 'enum',
  'projection.project.values' = '${PROJECTS}',
  'storage.location.template' = '${LAKE}/labels/project=${project}/'
)

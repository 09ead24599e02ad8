-- The run manifests (runs/...): one JSON line per run. Manifests written before they were one line
-- (indented JSON) are skipped ('ignore.malformed.json').
CREATE EXTERNAL TABLE IF NOT EXISTS ${DATABASE}.runs (
  format_version int,
  run_id string,
  project_hash string,
  mode string,
  started_at string,
  finished_at string,
  signpost string,
  previous_watermark string,
  watermark_before string,
  watermark string,
  counts struct<written: int, unchanged: int, moved: int, removed: int, failed: int, stale: int>,
  gaps_open int,
  chunks int,
  unlabelled array<string>,
  rows array<struct<label_hash: string, status: string, key: string, old_key: string, last_edited_at: string, sha256: string, reason: string>>,
  snapshots array<struct<snapshot_id: string, branch: string, stage: string>>,
  snapshots_owed int,
  errors array<string>
)
PARTITIONED BY (project string)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
WITH SERDEPROPERTIES ('ignore.malformed.json' = 'true')
LOCATION '${LAKE}/runs/'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.project.type' = 'enum',
  'projection.project.values' = '${PROJECTS}',
  'storage.location.template' = '${LAKE}/runs/project=${project}/'
)

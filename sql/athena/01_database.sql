-- The Glue database of the lake's tables. ${DATABASE}: its name (template.yaml: encord_mirror_<stack>).
CREATE DATABASE IF NOT EXISTS ${DATABASE}

-- boxes per class per stage
SELECT stage, name, count(*) AS boxes
FROM ${DATABASE}.annotations
WHERE project = '${PROJECT}' AND branch = 'main' AND kind = 'object' AND shape = 'bounding_box'
GROUP BY stage, name
ORDER BY stage, name;

-- rows per stage
SELECT mirror.stage AS stage, count(*) AS row_count
FROM ${DATABASE}.labels
WHERE project = '${PROJECT}' AND mirror.branch = 'main'
GROUP BY mirror.stage
ORDER BY stage;

-- what each run did
SELECT run_id, mode, counts.written AS written, counts.moved AS moved, counts.removed AS removed
FROM ${DATABASE}.runs
WHERE project = '${PROJECT}'
ORDER BY run_id;

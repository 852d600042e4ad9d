-- Readers that catch up on task changes (the list page's stream, the API while Redis is down)
-- ask for tasks changed since a moment: without this index, a scan of every task.
CREATE INDEX tasks_updated ON tasks (updated_at);

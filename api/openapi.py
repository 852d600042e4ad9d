"""The OpenAPI 3.1 document of the JSON routes (``/tasklog/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

from api.launch import DEMO_TASKS
from tasklog.core import __version__
from tasklog.core.constants import ALL_STATES

_TASK = {
    "type": "object",
    "properties": {
        "task_id": {"type": "string"},
        "task_name": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": sorted(ALL_STATES)},
        "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
        "progress_message": {"type": ["string", "null"]},
        "host": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "completed_at": {"type": ["string", "null"], "format": "date-time"},
        "runtime": {"type": ["number", "null"]},
        "exc_type": {"type": ["string", "null"]},
        "exc_message": {"type": ["string", "null"]},
        "line_count": {"type": "integer"},
        "last_seq": {"type": "integer"},
        "finished": {"type": "boolean"},
    },
    "required": ["task_id", "task_name", "status", "progress", "started_at", "completed_at"],
}
_LINE = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "description": "the line's seq within its task"},
        "timestamp": {"type": "string", "format": "date-time"},
        "stream": {"type": "string", "enum": ["stdout", "stderr", "log", "marker"]},
        "level": {"type": ["string", "null"]},
        "message": {"type": "string"},
    },
}
_LAUNCH = {
    "type": "object",
    "properties": {
        "task": {"type": "string", "enum": sorted(DEMO_TASKS)},
        "kwargs": {"type": "object", "description": "the task's keyword arguments"},
    },
    "required": ["task"],
}
_ERROR = {
    "description": "bad input",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def _json(ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def document(prefix: str) -> dict[str, Any]:
    task_id = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
    sse = {"200": {"description": "text/event-stream"}, "400": _ERROR}
    return {
        "openapi": "3.1.0",
        "info": {"title": "celery-tasklog", "version": __version__},
        "components": {
            "schemas": {
                "Task": _TASK,
                "Line": _LINE,
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
                "TaskList": {
                    "type": "object",
                    "properties": {
                        "results": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Task"},
                        },
                        "next": {"type": ["string", "null"], "format": "uri"},
                    },
                },
                "TaskDetail": {
                    "allOf": [{"$ref": "#/components/schemas/Task"}],
                    "properties": {
                        "logs": {"type": "array", "items": {"$ref": "#/components/schemas/Line"}},
                        "log_count": {"type": "integer"},
                        "traceback": {"type": ["string", "null"]},
                        "next": {"type": ["string", "null"], "format": "uri"},
                    },
                },
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            f"{prefix}/api/tasks/": {
                "get": {
                    "summary": "Recent tasks, newest first",
                    "parameters": [
                        _q("state", {"type": "string"}, "Celery state(s), comma-separated"),
                        _q("name", {"type": "string"}, "task name"),
                        _q("host", {"type": "string"}, "worker host"),
                        _q("since", {"type": "string", "format": "date-time"}, "created since"),
                        _q("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "page size"),
                        _q("cursor", {"type": "string"}, "from a `next` link"),
                    ],
                    "responses": {"200": _json("TaskList"), "400": _ERROR},
                }
            },
            f"{prefix}/api/tasks/{{task_id}}/": {
                "get": {
                    "summary": "One task with its lines after `after_seq`",
                    "parameters": [
                        task_id,
                        _q("after_seq", {"type": "integer", "minimum": 0}, "last seq seen"),
                        _q("limit", {"type": "integer", "minimum": 1, "maximum": 5000}, "lines"),
                    ],
                    "responses": {"200": _json("TaskDetail"), "400": _ERROR, "404": _ERROR},
                }
            },
            f"{prefix}/api/tasks/{{task_id}}/raw": {
                "get": {
                    "summary": "The task's whole log as plain text",
                    "parameters": [task_id],
                    "responses": {"200": {"description": "text/plain"}, "404": _ERROR},
                }
            },
            f"{prefix}/sse/task/{{task_id}}/": {
                "get": {
                    "summary": "Live lines (SSE, `id:` = seq): connected, new_log, status, end",
                    "parameters": [
                        task_id,
                        _q("after_seq", {"type": "integer", "minimum": 0}, "or Last-Event-ID"),
                    ],
                    "responses": sse,
                }
            },
            f"{prefix}/sse/tasks/": {
                "get": {"summary": "Live task changes (SSE status events)", "responses": sse}
            },
            f"{prefix}/sse/test/": {"get": {"summary": "A test stream", "responses": sse}},
            f"{prefix}/api/launch/": {
                "post": {
                    "summary": "Launch a demo task: {task, kwargs}",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _LAUNCH}},
                    },
                    "responses": {
                        "202": {"description": "task_id and page url"},
                        "400": _ERROR,
                        "403": _ERROR,
                        "404": _ERROR,
                        "503": _ERROR,
                    },
                }
            },
            f"{prefix}/api/diagnostic/": {"get": {"summary": "Diagnostics", "responses": {}}},
            f"{prefix}/healthz": {
                "get": {"summary": "Liveness and reachability", "security": [], "responses": {}}
            },
            f"{prefix}/metrics": {"get": {"summary": "Prometheus text", "responses": {}}},
        },
    }

"""The labeling web app (Starlette + Jinja2, server-rendered; ``static/label.js`` adds the keyboard).

Pages: ``/login``, ``/`` (the labeler's own progress), ``/next`` (their oldest unfinished item, else a new one),
``/task/{id}`` (rank or demonstration form; only its owner can read or submit it), ``/admin`` (progress, agreement,
time per task; admins only). Every POST checks the session's CSRF token; the database work runs in the thread
pool so a slow disk never stalls the event loop.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from rlhf_kit.label import security
from rlhf_kit.label.agreement import labeler_agreement
from rlhf_kit.label.store import Store
from rlhf_kit.label.tasks import FLAGS, RATING_MAX, RATING_MIN, FormError, parse_demo_form, parse_rank_form

HERE = Path(__file__).parent
LETTERS = "ABCDEFGHI"


class SecurityHeaders:
    """Pure ASGI middleware adding ``security.SECURITY_HEADERS`` to every HTTP response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in security.SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(db_path: str | Path, login_limit: str = "5/minute", address_limit: str = "20/minute",
              https_only: bool = False) -> Starlette:
    """The ASGI app over one label database; ``login_limit``/``address_limit`` cap failed logins."""
    store = Store(db_path, create=False)
    templates = Jinja2Templates(directory=HERE / "templates")  # autoescape is on for .html
    limiter = security.LoginLimiter(login_limit, address_limit)

    def render(request: Request, template: str, status: int = 200, **context) -> Response:
        context.setdefault("user", request.state.user if hasattr(request.state, "user") else None)
        context["csrf"] = security.csrf_token(request.session)
        return templates.TemplateResponse(request, template, context, status_code=status)

    async def signed_in(request: Request, admin: bool = False):
        """The session's user (stored on ``request.state``), or a response refusing the request."""
        uid = request.session.get("uid")
        user = await run_in_threadpool(store.user, uid) if uid else None
        if user is None:
            return None, RedirectResponse("/login", status_code=303)
        request.state.user = user
        if admin and not user["is_admin"]:
            return user, render(request, "error.html", 403, message="This page is for admins.")
        return user, None

    async def checked_form(request: Request):
        form = await request.form()
        if not security.csrf_ok(request.session, form.get("csrf_token")):
            return form, render(request, "error.html", 403, message="The form expired or came from elsewhere; "
                                                                     "reload the page and submit again.")
        return form, None

    async def login_page(request: Request):
        return render(request, "login.html")

    async def login(request: Request):
        form, refused = await checked_form(request)
        if refused:
            return refused
        name, address = str(form.get("name", "")).strip(), request.client.host if request.client else "-"
        if limiter.blocked(address, name):
            wait = limiter.retry_after(address, name)
            response = render(request, "login.html", 429, error=f"Too many failed logins; try again in {wait} s.")
            response.headers["retry-after"] = str(wait)
            return response
        user = await run_in_threadpool(store.user_by_name, name)
        ok = await run_in_threadpool(security.verify_password, user["password_hash"] if user else None,
                                     str(form.get("password", "")))
        if not ok:
            limiter.failed(address, name)
            return render(request, "login.html", 401, error="Wrong name or password.", name=name)
        request.session.clear()  # a new session (and CSRF token) at login: no session fixation
        request.session["uid"] = user["id"]
        return RedirectResponse("/", status_code=303)

    async def logout(request: Request):
        _, refused = await checked_form(request)
        if refused:
            return refused
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def home(request: Request):
        user, refused = await signed_in(request)
        if refused:
            return refused
        progress = await run_in_threadpool(store.progress, user["id"])
        recent = await run_in_threadpool(store.recent_labels, user["id"])
        return render(request, "home.html", progress=progress, recent=recent,
                      empty=request.query_params.get("empty") == "1")

    async def next_task(request: Request):
        user, refused = await signed_in(request)
        if refused:
            return refused
        aid = await run_in_threadpool(store.next_assignment, user["id"])
        return RedirectResponse(f"/task/{aid}" if aid else "/?empty=1", status_code=303)

    async def task_page(request: Request, error: str | None = None, status: int = 200):
        user, refused = await signed_in(request)
        if refused:
            return refused
        task = await run_in_threadpool(store.assignment, request.path_params["aid"], user["id"])
        if task is None:  # someone else's, or none: the same answer, so ids reveal nothing
            return render(request, "error.html", 404, message="No such task in your queue.")
        if task["label_id"]:
            return RedirectResponse("/next", status_code=303)
        await run_in_threadpool(store.mark_started, task["id"])
        progress = await run_in_threadpool(store.progress, user["id"])
        if task["kind"] == "demo":
            return render(request, "demo.html", status, task=task, error=error, progress=progress)
        shown = [{"index": i, "letter": LETTERS[n], "text": task["responses"][i]}
                 for n, i in enumerate(task["display_order"])]
        return render(request, "rank.html", status, task=task, shown=shown, flags=FLAGS, error=error,
                      ratings=range(RATING_MIN, RATING_MAX + 1), progress=progress)

    async def submit_task(request: Request):
        user, refused = await signed_in(request)
        if refused:
            return refused
        form, refused = await checked_form(request)
        if refused:
            return refused
        task = await run_in_threadpool(store.assignment, request.path_params["aid"], user["id"])
        if task is None:
            return render(request, "error.html", 404, message="No such task in your queue.")
        if task["label_id"]:  # a repeated submit (double click, retry): already stored, same answer
            return RedirectResponse("/next", status_code=303)
        try:
            label = (parse_demo_form(form, task["prompt"]) if task["kind"] == "demo"
                     else parse_rank_form(form, len(task["responses"])))
        except FormError as err:
            return await task_page(request, error=str(err), status=400)
        await run_in_threadpool(store.submit, task, label)
        return RedirectResponse("/next", status_code=303)

    async def admin(request: Request):
        _, refused = await signed_in(request, admin=True)
        if refused:
            return refused
        context = await run_in_threadpool(admin_context, store)
        return render(request, "admin.html", **context)

    async def healthz(request: Request):
        return PlainTextResponse("ok")

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", home),
        Route("/next", next_task),
        Route("/task/{aid:int}", task_page, methods=["GET"]),
        Route("/task/{aid:int}", submit_task, methods=["POST"]),
        Route("/admin", admin),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=store.setting("secret_key"), session_cookie="rlhf_label",
                   max_age=12 * 3600, same_site="strict", https_only=https_only),
    ]
    return Starlette(routes=routes, middleware=middleware)


def admin_context(store: Store) -> dict:
    """Queue totals and one row per labeler: done, in progress, agreement with peers and gold, time per task."""
    labels = store.labels()
    agreement = labeler_agreement(labels)
    rows = []
    for user in store.users():
        seconds = [lab["seconds"] for lab in labels if lab["user_id"] == user["id"] and lab["seconds"] is not None]
        empty = {"rate": None, "pairs": 0}
        rows.append({
            "name": user["name"], "is_admin": bool(user["is_admin"]), **store.progress(user["id"]),
            "peers": agreement.get(user["name"], {}).get("peers", empty),
            "gold": agreement.get(user["name"], {}).get("gold", empty),
            "median_seconds": statistics.median(seconds) if seconds else None,
            "mean_seconds": statistics.fmean(seconds) if seconds else None,
        })
    return {"counts": store.counts(), "labelers": rows}

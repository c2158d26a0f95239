#!/usr/bin/env python3
"""Real Schwab client libraries against `portcullis demo`.

Starts the demo (simulator + proxy) on free loopback ports in a temporary
directory, then drives schwab-py 1.5.x and Schwabdev 4.x through the proxy,
configured exactly as docs/clients.md tells users to do it. The proxy key
sits where each library keeps its Schwab access token.

    python3 tests/clients/smoke.py --binary target/debug/portcullis

Exits non-zero on the first failed check; prints "N passed, 0 failed".
"""

import argparse
import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time

PASSED = 0


def check(cond, what):
    global PASSED
    if not cond:
        print(f"FAIL: {what}", flush=True)
        print("0 passed, 1 failed")
        sys.exit(1)
    PASSED += 1
    print(f"ok   {what}", flush=True)


def start_demo(binary, workdir):
    proc = subprocess.Popen(
        [binary, "demo", "--dir", os.path.join(workdir, "demo"),
         "--proxy-addr", "127.0.0.1:0", "--sim-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proxy = None
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise SystemExit(f"demo exited with {proc.returncode}")
            continue
        m = re.match(r"\s+proxy\s+https://([\d.]+):(\d+)", line)
        if m:
            proxy = (m.group(1), int(m.group(2)))
        if "Press Ctrl-C" in line:
            break
    if proxy is None:
        proc.kill()
        raise SystemExit("demo did not print its proxy address")
    return proc, proxy


def schwab_py(ca, host, port, workdir):
    # SSL_CERT_FILE must be set before the client is built (httpx reads it then).
    os.environ["SSL_CERT_FILE"] = ca
    import httpx
    import schwab
    from schwab.orders.equities import equity_buy_limit
    from schwab.utils import Utils

    token_path = os.path.join(workdir, "schwab-py-token.json")
    with open(token_path, "w") as f:
        json.dump({"creation_timestamp": int(time.time()),
                   "token": {"access_token": "demo-trader-key", "refresh_token": "portcullis-placeholder",
                             "token_type": "Bearer", "expires_in": 1800, "scope": "api",
                             "expires_at": 4102444800}}, f)
    proxy = httpx.URL(f"https://{host}:{port}")

    def to_proxy(req):
        if req.url.host == "api.schwabapi.com":
            req.url = req.url.copy_with(scheme=proxy.scheme, host=proxy.host, port=proxy.port)

    c = schwab.auth.client_from_token_file(token_path, "placeholder-app-key", "placeholder-app-secret")
    c.session.event_hooks["request"].append(to_proxy)

    r = c.get_quotes(["AAPL", "$SPX", "/ESZ25"])
    check(r.status_code == 200 and set(r.json()) == {"AAPL", "$SPX", "/ESZ25"}, "schwab-py get_quotes (batch, $ and / symbols)")
    r = c.get_quote("$SPX")
    check(r.status_code == 200 and "$SPX" in r.json(), "schwab-py get_quote('$SPX') raw $ in the path")
    r = c.get_account_numbers()
    check(r.status_code == 200, "schwab-py get_account_numbers")
    account_hash = r.json()[0]["hashValue"]
    r = c.get_accounts(fields=[c.Account.Fields.POSITIONS])
    check(r.status_code == 200 and "positions" in r.json()[0]["securitiesAccount"], "schwab-py get_accounts(positions)")
    r = c.get_account(account_hash)
    check(r.status_code == 200, "schwab-py get_account")
    r = c.get_user_preferences()
    check(r.status_code == 200 and "streamerInfo" in r.json(), "schwab-py get_user_preferences")
    r = c.get_price_history_every_day("AAPL")
    check(r.status_code == 200 and r.json()["candles"], "schwab-py get_price_history_every_day")
    r = c.get_option_chain("AAPL")
    check(r.status_code == 200 and r.json()["callExpDateMap"], "schwab-py get_option_chain")
    r = c.get_market_hours([c.MarketHours.Market.EQUITY, c.MarketHours.Market.OPTION])
    check(r.status_code == 200 and "equity" in r.json(), "schwab-py get_market_hours")
    r = c.get_movers(c.Movers.Index.SPX)
    check(r.status_code == 200, "schwab-py get_movers($SPX)")
    r = c.get_instruments(["AAPL"], c.Instrument.Projection.FUNDAMENTAL)
    check(r.status_code == 200, "schwab-py get_instruments")

    r = c.place_order(account_hash, equity_buy_limit("AAPL", 10, "150.00"))
    order_id = Utils(c, account_hash).extract_order_id(r)
    check(r.status_code == 201 and order_id is not None, "schwab-py place_order + extract_order_id (Location unchanged)")
    r = c.get_order(order_id, account_hash)
    check(r.status_code == 200 and r.json()["status"] == "WORKING", "schwab-py get_order")
    r = c.get_orders_for_account(account_hash)
    check(r.status_code == 200 and any(o["orderId"] == order_id for o in r.json()), "schwab-py get_orders_for_account")
    r = c.get_orders_for_all_linked_accounts()
    check(r.status_code == 200, "schwab-py get_orders_for_all_linked_accounts")
    r = c.cancel_order(order_id, account_hash)
    check(r.status_code == 200, "schwab-py cancel_order")
    r = c.get_transactions(account_hash)
    check(r.status_code == 200, "schwab-py get_transactions")
    # The demo's guard rule: at most 100 shares per order. The client sees a
    # 403 with the stable reason code; the simulator never sees the order.
    r = c.place_order(account_hash, equity_buy_limit("AAPL", 500, "150.00"))
    check(r.status_code == 403 and r.json().get("reason") == "order_quantity_limit",
          "schwab-py place_order over the demo limit → 403 order_quantity_limit")


def schwab_py_proxy_tokens(ca, host, port, workdir):
    """schwab-py with short-lived proxy tokens: the app key is the caller id,
    the app secret the caller key, and authlib refreshes the token at the
    proxy's /v1/oauth/token through the same request hook."""
    import httpx
    import schwab

    r = httpx.post(f"https://{host}:{port}/v1/oauth/token", verify=ca,
                   auth=("demo-viewer", "demo-viewer-key"), data={"grant_type": "client_credentials"})
    check(r.status_code == 200 and r.json()["access_token"].startswith("pc_at_"),
          "proxy token endpoint: client_credentials")
    first = r.json()
    token_path = os.path.join(workdir, "schwab-py-proxy-token.json")
    with open(token_path, "w") as f:
        # expires_at in 10 s: inside authlib's 300 s leeway, so the first call refreshes.
        json.dump({"creation_timestamp": int(time.time()),
                   "token": dict(first, expires_at=int(time.time()) + 10)}, f)
    proxy = httpx.URL(f"https://{host}:{port}")

    def to_proxy(req):
        if req.url.host == "api.schwabapi.com":
            req.url = req.url.copy_with(scheme=proxy.scheme, host=proxy.host, port=proxy.port)

    c = schwab.auth.client_from_token_file(token_path, "demo-viewer", "demo-viewer-key")
    c.session.event_hooks["request"].append(to_proxy)
    r = c.get_quotes(["AAPL"])
    check(r.status_code == 200 and "AAPL" in r.json(), "schwab-py with a proxy token")
    with open(token_path) as f:
        now = json.load(f)["token"]
    check(now["access_token"].startswith("pc_at_") and now["access_token"] != first["access_token"]
          and now["refresh_token"] != first["refresh_token"],
          "schwab-py refreshed its proxy token at the proxy (rotated refresh token written back)")


def schwabdev_db(path, key):
    db = sqlite3.connect(path)
    db.execute("""CREATE TABLE schwabdev (access_token_issued TEXT NOT NULL, refresh_token_issued TEXT NOT NULL,
        access_token TEXT NOT NULL, refresh_token TEXT NOT NULL, id_token TEXT NOT NULL,
        expires_in INTEGER, token_type TEXT, scope TEXT)""")
    db.execute("INSERT INTO schwabdev VALUES ('2099-01-01T00:00:00+00:00','2099-01-01T00:00:00+00:00',?,"
               "'portcullis-placeholder','x',1800,'Bearer','api')", (key,))
    db.commit()
    db.close()


def schwabdev_clients(ca, host, port, workdir):
    os.environ["REQUESTS_CA_BUNDLE"] = ca
    os.environ["SSL_CERT_FILE"] = ca
    import schwabdev

    schwabdev.client.ClientBase._base_api_url = f"https://{host}:{port}"
    db = os.path.join(workdir, "schwabdev-tokens.db")
    schwabdev_db(db, "demo-viewer-key")
    app_key, app_secret = "a" * 32, "b" * 16
    c = schwabdev.Client(app_key, app_secret, "https://127.0.0.1", tokens_db=db, open_browser_for_auth=False)
    r = c.linked_accounts()
    check(r.status_code == 200 and r.json()[0]["hashValue"], "Schwabdev linked_accounts")
    account_hash = r.json()[0]["hashValue"]
    r = c.account_details_all(fields="positions")
    check(r.status_code == 200 and len(r.json()) == 2, "Schwabdev account_details_all (trailing slash)")
    r = c.account_details(account_hash)
    check(r.status_code == 200, "Schwabdev account_details")
    r = c.quotes(["AAPL", "$SPX"])
    check(r.status_code == 200 and "$SPX" in r.json(), "Schwabdev quotes")
    r = c.quote("$SPX")
    check(r.status_code == 200 and "$SPX" in r.json(), "Schwabdev quote('$SPX') as %24SPX")
    r = c.quote("/ES")
    check(r.status_code == 200 and "/ES" in r.json(), "Schwabdev quote('/ES') as %2FES")
    r = c.market_hours(["equity", "option"])
    check(r.status_code == 200, "Schwabdev market_hours")
    r = c.preferences()
    check(r.status_code == 200, "Schwabdev preferences")

    async def run_async():
        async with schwabdev.ClientAsync(app_key, app_secret, "https://127.0.0.1", tokens_db=db,
                                         open_browser_for_auth=False) as ac:
            r = await ac.quote("$SPX")
            ok = r.status == 200 and "$SPX" in await r.json()
            r2 = await ac.market_hours(["equity", "option"])
            return ok, r2.status

    try:
        ok, hours_status = asyncio.run(run_async())
        check(ok, "Schwabdev ClientAsync quote('$SPX') raw $ (aiohttp)")
        check(hours_status == 200, "Schwabdev ClientAsync market_hours (repeated markets= keys)")
    except ImportError:
        print("skip Schwabdev ClientAsync: aiohttp not installed")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/debug/portcullis")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        proc, (host, port) = start_demo(os.path.abspath(args.binary), workdir)
        try:
            ca = os.path.join(workdir, "demo", "ca.pem")
            schwab_py(ca, host, port, workdir)
            schwab_py_proxy_tokens(ca, host, port, workdir)
            schwabdev_clients(ca, host, port, workdir)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        check(proc.returncode == 0, "demo shut down cleanly on SIGTERM")
    print(f"{PASSED} passed, 0 failed")


if __name__ == "__main__":
    main()

"""`genpipe serve`: one registered model over HTTP, the version an alias names, following it.

    loaded.py     a version loaded with MLflow (`mlflow.pyfunc.load_model`) and checked
    follow.py     the alias followed: polled, woken by a webhook, each move loaded beside the
                  served version, then switched to atomically; a failed load keeps the old
    webhook.py    MLflow's webhook: registered with a secret of its own, posts verified (HMAC,
                  timestamp, delivery id)
    pictures.py   seeds from a query, PNGs out and in
    app.py        the HTTP routes: MLflow's scoring protocol on /invocations (its own code),
                  /health, /version, /sample.png, /reconstruct, /webhook
    run.py        the command: resolve, bind, serve until SIGTERM or Ctrl-C
"""

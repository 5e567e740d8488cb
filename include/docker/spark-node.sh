#!/usr/bin/env bash
# A Spark standalone master or worker, or the Spark Connect server the stages connect to, run from the scripts inside
# the installed pyspark package, so the cluster runs the same Spark and Python packages as the drivers.
# Usage: spark-node.sh master|worker|connect [args...]
set -euo pipefail
SPARK_HOME="$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
export SPARK_HOME
role="$1"
shift
case "$role" in
  master) exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master "$@" ;;
  worker) exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker "$@" ;;
  connect) exec "$SPARK_HOME/bin/spark-submit" --class org.apache.spark.sql.connect.service.SparkConnectServer \
             --name flightplan "$@" ;;
  *) echo "spark-node.sh: the role is 'master', 'worker' or 'connect', not '$role'" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Entrypoint of the netsift image (run under tini).
#
# Spark on Kubernetes starts its pods with the first argument "driver" or "executor"
# and passes the rest in SPARK_* environment variables: the contract of the entrypoint
# in Spark's own images, kept here so the Python base image can serve as a Spark image.
# Any other command runs as given (netsift, netsift-capture-agent, bash).
set -euo pipefail

spark_classpath() {
  local classpath="${SPARK_CONF_DIR:-$SPARK_HOME/conf}:$SPARK_HOME/jars/*"
  if [[ -n ${HADOOP_CONF_DIR:-} ]]; then classpath="$HADOOP_CONF_DIR:$classpath"; fi
  if [[ -n ${SPARK_CLASSPATH:-} ]]; then classpath="$classpath:$SPARK_CLASSPATH"; fi
  if [[ -n ${SPARK_EXTRA_CLASSPATH:-} ]]; then classpath="$classpath:$SPARK_EXTRA_CLASSPATH"; fi
  printf '%s' "$classpath"
}

case "${1:-}" in
  driver)
    shift
    : "${SPARK_HOME:?SPARK_HOME is not set}"
    exec "$SPARK_HOME/bin/spark-submit" \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS:?}" \
      --deploy-mode client "$@"
    ;;
  executor)
    shift
    : "${SPARK_HOME:?SPARK_HOME is not set}"
    # The executor's JVM options arrive as SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ... in order.
    java_opts=()
    while IFS= read -r option; do
      java_opts+=("$option")
    done < <(env | grep '^SPARK_JAVA_OPT_[0-9]*=' | sort -t_ -k4 -n | sed 's/^[^=]*=//')
    exec "${JAVA_HOME:+$JAVA_HOME/bin/}java" "${java_opts[@]}" \
      "-Xms${SPARK_EXECUTOR_MEMORY:?}" "-Xmx${SPARK_EXECUTOR_MEMORY}" \
      -cp "$(spark_classpath)" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "${SPARK_DRIVER_URL:?}" \
      --executor-id "${SPARK_EXECUTOR_ID:?}" \
      --cores "${SPARK_EXECUTOR_CORES:?}" \
      --app-id "${SPARK_APPLICATION_ID:?}" \
      --hostname "${SPARK_EXECUTOR_POD_IP:?}" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:?}" \
      --podName "${SPARK_EXECUTOR_POD_NAME:?}"
    ;;
  "")
    echo "entrypoint.sh: no command given" >&2
    exit 2
    ;;
  *)
    exec "$@"
    ;;
esac

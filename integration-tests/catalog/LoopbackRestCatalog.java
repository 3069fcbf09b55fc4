/*
 * Apache Iceberg's REST catalog test server (org.apache.iceberg.rest.RESTCatalogServer, the code
 * behind the apache/iceberg-rest-fixture image), bound to one address instead of every interface.
 *
 *   java -cp 'LIBS/*:CLASSES' org.apache.iceberg.rest.LoopbackRestCatalog HOST PORT
 *
 * The catalog behind it is the fixture's own: RESTCatalogServer builds it from the CATALOG_*
 * environment variables (CATALOG_URI=jdbc:sqlite:file:..., CATALOG_WAREHOUSE=s3://...,
 * CATALOG_IO__IMPL=org.apache.iceberg.aws.s3.S3FileIO, CATALOG_S3_ENDPOINT=..., see RCKUtils),
 * and RESTServerCatalogAdapter with RESTCatalogServlet serve it, gzip as in the fixture. Only
 * the Jetty connector differs: RESTCatalogServer.start listens on 0.0.0.0, tests listen on
 * 127.0.0.1. This class sits in the fixture's package to reach its package-private adapter.
 */
package org.apache.iceberg.rest;

import java.lang.reflect.Method;
import org.eclipse.jetty.compression.gzip.GzipCompression;
import org.eclipse.jetty.compression.server.CompressionHandler;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;

public final class LoopbackRestCatalog {
  private LoopbackRestCatalog() {}

  public static void main(String[] args) throws Exception {
    if (args.length != 2) {
      System.err.println("usage: LoopbackRestCatalog HOST PORT");
      System.exit(2);
    }
    String host = args[0];
    int port = Integer.parseInt(args[1]);

    // The fixture's backend catalog, exactly as RESTCatalogServer.start builds it.
    RESTCatalogServer fixture = new RESTCatalogServer();
    Method init = RESTCatalogServer.class.getDeclaredMethod("initializeBackendCatalog");
    init.setAccessible(true);
    RESTCatalogServer.CatalogContext context = (RESTCatalogServer.CatalogContext) init.invoke(fixture);
    RESTCatalogServlet servlet = new RESTCatalogServlet(new RESTServerCatalogAdapter(context));

    ServletContextHandler handler = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
    handler.addServlet(new ServletHolder(servlet), "/*");
    CompressionHandler compression = new CompressionHandler();
    compression.putCompression(new GzipCompression());
    handler.insertHandler(compression);

    Server server = new Server();
    ServerConnector connector = new ServerConnector(server);
    connector.setHost(host);
    connector.setPort(port);
    server.addConnector(connector);
    server.setHandler(handler);
    server.setStopAtShutdown(true);
    server.start();
    System.out.println("rest catalog listening on http://" + host + ":" + connector.getLocalPort());
    server.join();
  }
}
